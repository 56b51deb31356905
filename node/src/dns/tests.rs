//! Tests of the DNS server over loopback sockets: hand-built queries, a fake upstream.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::*;

const DEADLINE: Duration = Duration::from_secs(5);

fn service(ns: &str, name: &str, ip: Option<[u8; 4]>, endpoints: &[[u8; 4]]) -> ServiceRecord {
    ServiceRecord {
        namespace: ns.into(),
        name: name.into(),
        cluster_ip: ip.map(Ipv4Addr::from),
        endpoints: endpoints.iter().map(|&e| Ipv4Addr::from(e)).collect(),
        ports: Vec::new(),
    }
}

fn port(name: &str, proto: Proto, port: u16) -> ServicePort {
    ServicePort { name: name.into(), proto, port }
}

/// `api` (cluster IP, named ports), `db` (headless, two endpoints), `idle` (headless, none).
fn records() -> Records {
    let mut api = service("default", "api", Some([10, 96, 0, 10]), &[[10, 42, 1, 5]]);
    api.ports = vec![port("http", Proto::Tcp, 80), port("dns", Proto::Udp, 53)];
    let mut db = service("prod", "db", None, &[[10, 42, 2, 6], [10, 42, 1, 7]]);
    db.ports = vec![port("pg", Proto::Tcp, 5432)];
    let idle = service("prod", "idle", None, &[]);
    Records { domain: "cluster.local".into(), services: vec![api, db, idle] }
}

struct Fixture {
    server: DnsServer,
    records: watch::Sender<Arc<Records>>,
    addr: SocketAddr,
}

async fn start(upstream: Upstream, tuning: Tuning) -> Fixture {
    let (records, rx) = watch::channel(Arc::new(self::records()));
    let listen: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
    let server = DnsServer::start_with(&[listen], upstream, rx, tuning).await.expect("start");
    let addr = server.local_addrs()[0];
    Fixture { server, records, addr }
}

fn question(name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let mut message = Message::query();
    let name = Name::from_ascii(name).expect("test names are valid");
    message.add_query(Query::query(name, rtype));
    message.metadata.recursion_desired = true;
    if let Some(size) = edns {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        message.set_edns(edns);
    }
    message
}

async fn udp_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    socket.connect(addr).await.expect("connect");
    socket.send(bytes).await.expect("send");
    let mut buffer = vec![0; 65535];
    let len = tokio::time::timeout(DEADLINE, socket.recv(&mut buffer)).await.ok()?.ok()?;
    buffer.truncate(len);
    Some(buffer)
}

async fn udp_sized(addr: SocketAddr, name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let query = question(name, rtype, edns);
    let bytes = udp_raw(addr, &query.to_vec().expect("encode")).await.expect("an answer in time");
    let answer = Message::from_vec(&bytes).expect("a valid answer");
    assert_eq!(answer.metadata.id, query.metadata.id);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    answer
}

async fn udp(addr: SocketAddr, name: &str, rtype: RecordType) -> Message {
    udp_sized(addr, name, rtype, None).await
}

async fn tcp(addr: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let query = question(name, rtype, None).to_vec().expect("encode");
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let len = u16::try_from(query.len()).expect("short query");
        stream.write_all(&len.to_be_bytes()).await.expect("write");
        stream.write_all(&query).await.expect("write");
        let len = stream.read_u16().await.expect("read length");
        let mut buffer = vec![0; usize::from(len)];
        stream.read_exact(&mut buffer).await.expect("read");
        Message::from_vec(&buffer).expect("a valid answer")
    };
    tokio::time::timeout(DEADLINE, exchange).await.expect("an answer in time")
}

fn a_records(records: &[Record]) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = (records.iter())
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect();
    ips.sort_unstable();
    ips
}

/// A fake upstream on loopback: answers `example.org` A with 192.0.2.7 and NXDOMAIN for
/// anything else, counting the questions it gets.
async fn fake_upstream(tasks: &mut JoinSet<()>) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let addr = socket.local_addr().expect("address");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tasks.spawn(async move {
        let mut buffer = vec![0; 4096];
        while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
            seen.fetch_add(1, Ordering::SeqCst);
            let Ok(query) = Message::from_vec(&buffer[..len]) else { continue };
            let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
            answer.add_queries(query.queries.clone());
            let name = query.queries[0].name().clone();
            if name == Name::from_ascii("example.org.").expect("valid") {
                let ip = Ipv4Addr::new(192, 0, 2, 7);
                answer.add_answer(Record::from_rdata(name, 60, RData::A(A(ip))));
            } else {
                answer.metadata.response_code = ResponseCode::NXDomain;
            }
            let _ = socket.send_to(&answer.to_vec().expect("encode"), from).await;
        }
    });
    (addr, count)
}

#[tokio::test]
async fn cluster_ip_service_is_its_a_record() {
    let f = start(Upstream::None, Tuning::default()).await;
    let answer = udp(f.addr, "api.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(answer.answers[0].ttl, zone::TTL);
    // Case does not matter, and the client's spelling comes back.
    let answer = udp(f.addr, "API.Default.SVC.cluster.LOCAL.", RecordType::A).await;
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(answer.answers[0].name.to_ascii(), "API.Default.SVC.cluster.LOCAL.");
    f.server.shutdown().await;
}

#[tokio::test]
async fn headless_service_is_its_ready_endpoints() {
    let f = start(Upstream::None, Tuning::default()).await;
    let answer = udp(f.addr, "db.prod.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(10, 42, 1, 7), Ipv4Addr::new(10, 42, 2, 6)]);
    let answer = udp(f.addr, "10-42-2-6.db.prod.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(10, 42, 2, 6)]);
    // No ready endpoints: NXDOMAIN, as the specification says.
    let answer = udp(f.addr, "idle.prod.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    f.server.shutdown().await;
}

#[tokio::test]
async fn named_ports_are_srv_records_with_additional_addresses() {
    let f = start(Upstream::None, Tuning::default()).await;
    let answer = udp(f.addr, "_http._tcp.api.default.svc.cluster.local.", RecordType::SRV).await;
    let srv: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(srv, ["0 100 80 api.default.svc.cluster.local."]);
    assert_eq!(a_records(&answer.additionals), [Ipv4Addr::new(10, 96, 0, 10)]);
    let answer = udp(f.addr, "_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV).await;
    let mut srv: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    srv.sort();
    assert_eq!(
        srv,
        [
            "0 100 5432 10-42-1-7.db.prod.svc.cluster.local.",
            "0 100 5432 10-42-2-6.db.prod.svc.cluster.local."
        ]
    );
    assert_eq!(answer.additionals.len(), 2);
    // The protocol must match too.
    let answer = udp(f.addr, "_http._udp.api.default.svc.cluster.local.", RecordType::SRV).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    f.server.shutdown().await;
}

#[tokio::test]
async fn missing_names_are_nxdomain_and_aaaa_is_empty() {
    let mut tasks = JoinSet::new();
    let (upstream, asked) = fake_upstream(&mut tasks).await;
    let f = start(Upstream::Servers(vec![upstream]), Tuning::default()).await;
    for name in ["nope.default.svc.cluster.local.", "api.other.svc.cluster.local.", "x.cluster.local."] {
        let answer = udp(f.addr, name, RecordType::A).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(answer.metadata.authoritative, "{name}");
        assert!(matches!(answer.authorities[0].data, RData::SOA(_)), "{name}");
    }
    let answer = udp(f.addr, "api.default.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    // Names in the cluster domain never leave the node.
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    f.server.shutdown().await;
}

#[tokio::test]
async fn replaced_records_are_answered_at_once() {
    let f = start(Upstream::None, Tuning::default()).await;
    let mut next = records();
    next.services[0].cluster_ip = Some(Ipv4Addr::new(10, 96, 0, 99));
    next.services.push(service("default", "new", Some([10, 96, 0, 42]), &[]));
    f.records.send(Arc::new(next)).expect("the server holds a receiver");
    let answer = udp(f.addr, "api.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(10, 96, 0, 99)]);
    let answer = udp(f.addr, "new.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(10, 96, 0, 42)]);
    f.server.shutdown().await;
}

#[tokio::test]
async fn other_names_are_forwarded() {
    let mut tasks = JoinSet::new();
    let (upstream, asked) = fake_upstream(&mut tasks).await;
    let f = start(Upstream::Servers(vec![upstream]), Tuning::default()).await;
    let answer = udp(f.addr, "example.org.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(!answer.metadata.authoritative);
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(192, 0, 2, 7)]);
    let answer = udp(f.addr, "missing.example.org.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    f.server.shutdown().await;
}

#[tokio::test]
async fn a_silent_upstream_is_servfail_within_the_timeout() {
    // Bound but never read: questions to it go unanswered.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let upstream = silent.local_addr().expect("address");
    let tuning = Tuning { upstream_timeout: Duration::from_millis(300), ..Tuning::default() };
    let f = start(Upstream::Servers(vec![upstream]), tuning).await;
    let started = Instant::now();
    let answer = udp(f.addr, "example.org.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
    f.server.shutdown().await;
}

#[tokio::test]
async fn no_upstream_is_refused() {
    let f = start(Upstream::None, Tuning::default()).await;
    let answer = udp(f.addr, "example.org.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    f.server.shutdown().await;
    // An unreadable resolv.conf means no upstream, not a server that fails to start.
    let missing = Upstream::FromResolvConf("/nonexistent/resolv.conf".into());
    let f = start(missing, Tuning::default()).await;
    let answer = udp(f.addr, "example.org.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    f.server.shutdown().await;
}

#[tokio::test]
async fn garbage_does_not_stop_the_server() {
    let f = start(Upstream::None, Tuning::default()).await;
    let valid = question("api.default.svc.cluster.local.", RecordType::A, None).to_vec().expect("encode");
    let mut header_only_garbage = valid[..12].to_vec();
    header_only_garbage.extend_from_slice(&[0xff; 40]);
    let mut responses = valid.clone();
    responses[2] |= 0x80; // The QR bit: a response, which a server must not answer.
    for garbage in [&[][..], &[0xff; 5], &[0; 12], &header_only_garbage, &valid[..20], &responses] {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        socket.send_to(garbage, f.addr).await.expect("send");
    }
    // A malformed question with a readable header gets FORMERR.
    let answer = udp_raw(f.addr, &header_only_garbage).await.expect("an answer");
    assert_eq!(Message::from_vec(&answer).expect("valid").metadata.response_code, ResponseCode::FormErr);
    let answer = udp(f.addr, "api.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(10, 96, 0, 10)]);
    f.server.shutdown().await;
}

#[tokio::test]
async fn tcp_works_and_large_udp_answers_are_truncated() {
    let f = start(Upstream::None, Tuning::default()).await;
    let answer = tcp(f.addr, "api.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(10, 96, 0, 10)]);
    let mut many = records();
    let endpoints: Vec<[u8; 4]> = (1..=100).map(|i| [10, 42, 3, i]).collect();
    many.services.push(service("prod", "many", None, &endpoints));
    f.records.send(Arc::new(many)).expect("the server holds a receiver");
    let name = "many.prod.svc.cluster.local.";
    let answer = udp(f.addr, name, RecordType::A).await;
    assert!(answer.metadata.truncation);
    assert!(answer.answers.len() < 100);
    let answer = udp_sized(f.addr, name, RecordType::A, Some(4096)).await;
    assert!(answer.metadata.truncation, "capped at {MAX_UDP_PAYLOAD} bytes whatever EDNS says");
    let answer = tcp(f.addr, name, RecordType::A).await;
    assert!(!answer.metadata.truncation);
    assert_eq!(answer.answers.len(), 100);
    f.server.shutdown().await;
}

#[tokio::test]
async fn forwarding_past_the_limit_is_servfail_at_once() {
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let upstream = silent.local_addr().expect("address");
    let tuning = Tuning { max_forwarding: 0, upstream_timeout: DEADLINE * 2, ..Tuning::default() };
    let f = start(Upstream::Servers(vec![upstream]), tuning).await;
    let answer = udp(f.addr, "example.org.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    // Cluster names need no upstream and are not limited.
    let answer = udp(f.addr, "api.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(10, 96, 0, 10)]);
    f.server.shutdown().await;
}

#[tokio::test]
async fn a_truncated_upstream_answer_is_fetched_again_over_tcp() {
    // The fake upstream answers over UDP with only the TC bit, and fully over TCP.
    let udp_socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let upstream = udp_socket.local_addr().expect("address");
    let listener = tokio::net::TcpListener::bind(upstream).await.expect("the port is free for tcp too");
    let answer_to = |query: &Message, truncated: bool| {
        let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
        answer.add_queries(query.queries.clone());
        answer.metadata.truncation = truncated;
        if !truncated {
            let name = query.queries[0].name().clone();
            answer.add_answer(Record::from_rdata(name, 60, RData::A(A(Ipv4Addr::new(192, 0, 2, 8)))));
        }
        answer.to_vec().expect("encode")
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut buffer = vec![0; 4096];
        while let Ok((len, from)) = udp_socket.recv_from(&mut buffer).await {
            let Ok(query) = Message::from_vec(&buffer[..len]) else { continue };
            let _ = udp_socket.send_to(&answer_to(&query, true), from).await;
        }
    });
    tasks.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let Ok(len) = stream.read_u16().await else { continue };
            let mut buffer = vec![0; usize::from(len)];
            if stream.read_exact(&mut buffer).await.is_err() {
                continue;
            }
            let Ok(query) = Message::from_vec(&buffer) else { continue };
            let answer = answer_to(&query, false);
            let len = u16::try_from(answer.len()).expect("short answer");
            let _ = stream.write_all(&[&len.to_be_bytes()[..], &answer].concat()).await;
        }
    });
    let f = start(Upstream::Servers(vec![upstream]), Tuning::default()).await;
    let answer = udp(f.addr, "big.example.org.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(!answer.metadata.truncation);
    assert_eq!(a_records(&answer.answers), [Ipv4Addr::new(192, 0, 2, 8)]);
    f.server.shutdown().await;
}

#[tokio::test]
async fn an_address_the_node_does_not_have_is_an_error_naming_it() {
    // TEST-NET-1 is on no interface here, like a bridge address before the bridge exists.
    // Binding sends nothing.
    let (_records, rx) = watch::channel(Arc::new(records()));
    let listen: SocketAddr = (Ipv4Addr::new(192, 0, 2, 1), 0).into();
    let error = DnsServer::start(&[listen], Upstream::None, rx).await.err().expect("bind fails");
    let error = format!("{error:#}");
    assert!(error.starts_with("binding dns udp socket on 192.0.2.1:0: "), "{error}");
}
