//! The cluster zone: Kubernetes DNS records computed from a [`Records`] snapshot, pure.
//!
//! Follows the Kubernetes DNS-Based Service Discovery specification, schema 1.0.1:
//! `dns-version` TXT, service A and SRV records, headless endpoint records (an endpoint's
//! *hostname* is its dashed IP, `10-42-7-5`, the system-assigned identifier CoreDNS uses
//! too), PTR records for cluster IPs and headless endpoints, and the deprecated
//! `a-b-c-d.NS.pod.ZONE` A records.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::{Proto, Records};

/// Time to live of every record, in seconds: Kubernetes' default (CoreDNS `ttl 5`).
pub const TTL: u32 = 5;
/// The version of the Kubernetes DNS schema answered at `dns-version.ZONE`.
pub const SCHEMA_VERSION: &str = "1.0.1";
/// The cluster domain used when [`Records::domain`] is not a valid domain name.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// What to do with one question.
#[derive(Debug)]
pub enum Lookup {
    /// The name is outside the cluster zone (and not a known reverse name): forward it.
    Forward,
    /// The name is ours: answer authoritatively.
    Answer(Answer),
}

/// An authoritative answer from the cluster zone.
#[derive(Debug)]
pub struct Answer {
    /// `NoError` (possibly with no records: the name exists, the type does not) or `NXDomain`.
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    /// The zone's SOA on negative answers, so resolvers cache them for [`TTL`] seconds.
    pub authorities: Vec<Record>,
    /// A records for SRV targets.
    pub additionals: Vec<Record>,
}

/// One service as the zone answers it, names lowercased.
#[derive(Debug)]
struct Service {
    fqdn: Name,
    cluster_ip: Option<Ipv4Addr>,
    /// Sorted and deduplicated ready endpoints.
    endpoints: Vec<Ipv4Addr>,
    /// Named ports: lowercased name, protocol, number.
    ports: Vec<(String, Proto, u16)>,
}

/// A node of the zone tree that a question can name.
enum Node<'z> {
    Apex,
    /// A name that exists only because names below it do (`svc.ZONE`, `NS.svc.ZONE`, …).
    Empty,
    Version,
    Service(&'z Service),
    Endpoint(Ipv4Addr),
    Srv(&'z Service, &'z str, Proto),
    Pod(Ipv4Addr),
}

/// The index built from one [`Records`] snapshot; rebuilt whenever the snapshot changes.
#[derive(Debug)]
pub struct Zone {
    origin: Name,
    soa: Record,
    /// Keyed by lowercased (namespace, name).
    services: BTreeMap<(String, String), Service>,
    reverse: BTreeMap<Ipv4Addr, Name>,
}

impl Zone {
    /// Indexes `records`, skipping services whose names are not DNS labels; the second
    /// value counts what was skipped (the caller logs it).
    pub fn new(records: &Records) -> (Zone, usize) {
        let origin = domain_name(&records.domain);
        let mut skipped = 0;
        let mut services = BTreeMap::new();
        for record in &records.services {
            let (Some(ns), Some(name)) = (label(&record.namespace), label(&record.name)) else {
                skipped += 1;
                continue;
            };
            let Ok(fqdn) =
                Name::from_labels([name.as_str(), ns.as_str(), "svc"]).and_then(|n| n.append_domain(&origin))
            else {
                skipped += 1;
                continue;
            };
            let mut endpoints = record.endpoints.clone();
            endpoints.sort_unstable();
            endpoints.dedup();
            let ports = (record.ports.iter())
                .filter_map(|port| Some((label(&port.name)?, port.proto, port.port)))
                .collect();
            let service = Service { fqdn, cluster_ip: record.cluster_ip, endpoints, ports };
            services.insert((ns, name), service);
        }
        // The first service (in name order) to claim an address owns its PTR record.
        let mut reverse = BTreeMap::new();
        for service in services.values() {
            match service.cluster_ip {
                Some(ip) => {
                    reverse.entry(ip).or_insert_with(|| service.fqdn.clone());
                }
                None => {
                    for &ip in &service.endpoints {
                        if let Ok(host) = service.fqdn.prepend_label(dashed(ip)) {
                            reverse.entry(ip).or_insert(host);
                        }
                    }
                }
            }
        }
        let soa = soa_record(&origin);
        (Zone { origin, soa, services, reverse }, skipped)
    }

    /// The zone's apex, e.g. `cluster.local.`.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// Answers `qtype` for `qname`. Answer records carry `qname` as given, so a client
    /// that randomizes letter case gets its own spelling back.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let lower = qname.to_lowercase();
        if self.origin.zone_of(&lower) {
            // Counted by hand: `num_labels` leaves out a leading `*`.
            let all: Vec<&[u8]> = lower.iter().collect();
            let depth = all.len().saturating_sub(self.origin.iter().count());
            let labels: Option<Vec<&str>> =
                all[..depth].iter().rev().map(|l| std::str::from_utf8(l).ok()).collect();
            let node = labels.and_then(|labels| self.node(&labels));
            return Lookup::Answer(match node {
                None => self.negative(ResponseCode::NXDomain),
                Some(node) => self.positive(qname, qtype, node),
            });
        }
        match reverse_v4(&lower).and_then(|ip| self.reverse.get(&ip)) {
            None => Lookup::Forward,
            Some(target) if matches!(qtype, RecordType::PTR | RecordType::ANY) => {
                let ptr = Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(target.clone())));
                Lookup::Answer(Answer::records(vec![ptr], Vec::new()))
            }
            // The reverse name is ours but has no record of this type.
            Some(_) => Lookup::Answer(Answer::records(Vec::new(), Vec::new())),
        }
    }

    /// Finds the node named by `labels`, read from the zone apex down
    /// (`_http._tcp.web.default.svc` is `["svc", "default", "web", "_tcp", "_http"]`).
    fn node(&self, labels: &[&str]) -> Option<Node<'_>> {
        let service = |ns: &str, name: &str| {
            let service = self.services.get(&(ns.to_owned(), name.to_owned()))?;
            // A headless service without ready endpoints has no records at all: the
            // specification asks for NXDOMAIN.
            (service.cluster_ip.is_some() || !service.endpoints.is_empty()).then_some(service)
        };
        Some(match *labels {
            [] => Node::Apex,
            ["dns-version"] => Node::Version,
            ["svc"] | ["pod"] | ["pod", _] => Node::Empty,
            ["svc", ns] => self.services.keys().any(|(n, _)| n == ns).then_some(Node::Empty)?,
            ["svc", ns, name] => Node::Service(service(ns, name)?),
            ["svc", ns, name, proto] if proto.starts_with('_') => {
                let proto = parse_proto(proto)?;
                let service = service(ns, name)?;
                service.ports.iter().any(|(_, p, _)| *p == proto).then_some(Node::Empty)?
            }
            ["svc", ns, name, host] => {
                let service = service(ns, name)?;
                let ip = undashed(host)?;
                (service.cluster_ip.is_none() && service.endpoints.binary_search(&ip).is_ok())
                    .then_some(Node::Endpoint(ip))?
            }
            ["svc", ns, name, proto, port] => {
                let proto = parse_proto(proto)?;
                let port = port.strip_prefix('_')?;
                let service = service(ns, name)?;
                let (port, _, _) = service.ports.iter().find(|(n, p, _)| n == port && *p == proto)?;
                Node::Srv(service, port, proto)
            }
            ["pod", _, host] => Node::Pod(undashed(host)?),
            _ => return None,
        })
    }

    fn positive(&self, qname: &Name, qtype: RecordType, node: Node<'_>) -> Answer {
        let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        let a = |ip: Ipv4Addr| Record::from_rdata(qname.clone(), TTL, RData::A(A(ip)));
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        match node {
            Node::Empty => {}
            Node::Apex if wants(RecordType::SOA) => answers.push(self.soa.clone()),
            Node::Apex => {}
            Node::Version if wants(RecordType::TXT) => {
                let txt = TXT::new(vec![SCHEMA_VERSION.to_owned()]);
                answers.push(Record::from_rdata(qname.clone(), TTL, RData::TXT(txt)));
            }
            Node::Version => {}
            Node::Service(service) if wants(RecordType::A) => {
                // A cluster IP hides the endpoints behind it; headless names are the endpoints.
                match service.cluster_ip {
                    Some(ip) => answers.push(a(ip)),
                    None => answers.extend(service.endpoints.iter().map(|&ip| a(ip))),
                }
            }
            Node::Service(_) => {}
            Node::Endpoint(ip) | Node::Pod(ip) if wants(RecordType::A) => answers.push(a(ip)),
            Node::Endpoint(_) | Node::Pod(_) => {}
            Node::Srv(service, port, proto) if wants(RecordType::SRV) => {
                let number = (service.ports.iter())
                    .find(|(n, p, _)| n == port && *p == proto)
                    .map_or(0, |(_, _, number)| *number);
                // A cluster IP service has one target, itself; a headless one has one target
                // per ready endpoint. Priority and weight are equal everywhere.
                let targets: Vec<(Name, Ipv4Addr)> = match service.cluster_ip {
                    Some(ip) => vec![(service.fqdn.clone(), ip)],
                    None => (service.endpoints.iter())
                        .filter_map(|&ip| Some((service.fqdn.prepend_label(dashed(ip)).ok()?, ip)))
                        .collect(),
                };
                for (target, ip) in targets {
                    let srv = SRV::new(0, 100, number, target.clone());
                    answers.push(Record::from_rdata(qname.clone(), TTL, RData::SRV(srv)));
                    additionals.push(Record::from_rdata(target, TTL, RData::A(A(ip))));
                }
            }
            Node::Srv(..) => {}
        }
        let mut answer = Answer::records(answers, additionals);
        if answer.answers.is_empty() {
            answer.authorities.push(self.soa.clone());
        }
        answer
    }

    fn negative(&self, code: ResponseCode) -> Answer {
        Answer { code, answers: Vec::new(), authorities: vec![self.soa.clone()], additionals: Vec::new() }
    }
}

impl Answer {
    fn records(answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
        Answer { code: ResponseCode::NoError, answers, authorities: Vec::new(), additionals }
    }
}

/// The cluster domain as a lowercase FQDN, or [`DEFAULT_DOMAIN`] when it is not one: an
/// empty domain would make the zone the root and answer NXDOMAIN for the whole internet.
fn domain_name(domain: &str) -> Name {
    let fallback = || Name::from_ascii(DEFAULT_DOMAIN).expect("the default domain is valid");
    let trimmed = domain.trim().trim_end_matches('.');
    let mut name = match Name::from_ascii(trimmed) {
        Ok(name) if !trimmed.is_empty() => name.to_lowercase(),
        _ => fallback(),
    };
    name.set_fqdn(true);
    name
}

/// `value` lowercased if it can be one DNS label.
fn label(value: &str) -> Option<String> {
    let ok = !value.is_empty() && value.len() <= 63 && !value.contains(['.', '\\']);
    ok.then(|| value.to_ascii_lowercase())
}

fn parse_proto(label: &str) -> Option<Proto> {
    match label {
        "_tcp" => Some(Proto::Tcp),
        "_udp" => Some(Proto::Udp),
        _ => None,
    }
}

/// `10.42.7.5` as the label `10-42-7-5`.
fn dashed(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a}-{b}-{c}-{d}")
}

/// The label `10-42-7-5` as `10.42.7.5`; rejects other spellings (`010-…`) so one
/// address has one name.
fn undashed(label: &str) -> Option<Ipv4Addr> {
    let ip: Ipv4Addr = label.replace('-', ".").parse().ok()?;
    (dashed(ip) == label).then_some(ip)
}

/// The address named by `d.c.b.a.in-addr.arpa.`, if `name` is exactly that.
fn reverse_v4(name: &Name) -> Option<Ipv4Addr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let [d, c, b, a, b"in-addr", b"arpa"] = labels.as_slice() else { return None };
    let octet = |l: &[u8]| -> Option<u8> {
        let s = std::str::from_utf8(l).ok()?;
        let v: u8 = s.parse().ok()?;
        (v.to_string() == s).then_some(v)
    };
    Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

fn soa_record(origin: &Name) -> Record {
    let under = |label: &str| {
        Name::from_ascii(label).and_then(|n| n.append_domain(origin)).unwrap_or_else(|_| origin.clone())
    };
    // Refresh, retry and expire matter only to secondaries, which this zone has none of;
    // `minimum` is the negative-caching TTL (RFC 2308).
    let soa = SOA::new(under("ns.dns"), under("hostmaster"), 1, 7200, 1800, 86400, TTL);
    Record::from_rdata(origin.clone(), TTL, RData::SOA(soa))
}

#[cfg(test)]
mod tests;
