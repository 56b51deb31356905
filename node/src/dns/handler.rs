//! The request handler: one question in, the zone's answer or a forwarded one out.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::sync::{watch, Semaphore};

use super::upstream::{self, Upstreams};
use super::zone::{Lookup, Zone};
use super::{Records, Tuning, Upstream, MAX_UDP_PAYLOAD};

/// Answers questions from the latest [`Records`] snapshot, forwarding the rest.
pub struct Handler {
    records: watch::Receiver<Arc<Records>>,
    /// The zone built from the snapshot it names; rebuilt when the channel holds a new one.
    zone: Mutex<(Arc<Records>, Arc<Zone>)>,
    upstreams: Upstreams,
    /// Bounds forwarded questions in flight, the only answers that hold sockets and time.
    forwarding: Semaphore,
    upstream_timeout: Duration,
}

impl Handler {
    pub fn new(
        records: watch::Receiver<Arc<Records>>,
        upstream: Upstream,
        own: &[SocketAddr],
        tuning: &Tuning,
    ) -> Handler {
        let snapshot = records.borrow().clone();
        let zone = Arc::new(build(&snapshot));
        Handler {
            records,
            zone: Mutex::new((snapshot, zone)),
            upstreams: Upstreams::new(upstream, own),
            forwarding: Semaphore::new(tuning.max_forwarding),
            upstream_timeout: tuning.upstream_timeout,
        }
    }

    /// The zone for the channel's current snapshot: a question that arrives after a
    /// `send` returned is answered from the new records.
    fn zone(&self) -> Arc<Zone> {
        let snapshot = self.records.borrow().clone();
        // Both fields are replaced together, so a poisoned lock still holds a valid pair.
        let mut cached = self.zone.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !Arc::ptr_eq(&cached.0, &snapshot) {
            let zone = Arc::new(build(&snapshot));
            *cached = (snapshot, zone);
        }
        cached.1.clone()
    }

    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        response: &mut R,
    ) -> anyhow::Result<ResponseInfo> {
        let edns = request.edns.as_ref().map(|edns| {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            ours
        });
        let builder = || MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let error = |code| builder().error_msg(&request.metadata, code);
        if request.metadata.message_type != MessageType::Query || request.metadata.op_code != OpCode::Query {
            return Ok(response.send_response(error(ResponseCode::NotImp)).await?);
        }
        let [query] = request.queries.queries() else {
            return Ok(response.send_response(error(ResponseCode::FormErr)).await?);
        };
        if query.query_class() != DNSClass::IN {
            return Ok(response.send_response(error(ResponseCode::NotImp)).await?);
        }
        let question = query.original();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        match self.zone().lookup(question.name(), question.query_type()) {
            Lookup::Answer(answer) => {
                metadata.authoritative = true;
                metadata.response_code = answer.code;
                let message = builder().build(
                    metadata,
                    &answer.answers,
                    &answer.authorities,
                    None::<&Record>,
                    &answer.additionals,
                );
                Ok(response.send_response(message).await?)
            }
            Lookup::Forward => {
                let servers = self.upstreams.servers().await;
                if servers.is_empty() {
                    return Ok(response.send_response(error(ResponseCode::Refused)).await?);
                }
                let Ok(_permit) = self.forwarding.try_acquire() else {
                    tracing::debug!("dns forwarding limit reached");
                    return Ok(response.send_response(error(ResponseCode::ServFail)).await?);
                };
                let mut upstream_query = Message::query();
                upstream_query.add_query(question.clone());
                upstream_query.metadata.recursion_desired = true;
                upstream_query.metadata.checking_disabled = request.metadata.checking_disabled;
                let mut upstream_edns = Edns::new();
                upstream_edns.set_max_payload(MAX_UDP_PAYLOAD);
                upstream_query.set_edns(upstream_edns);
                let timeout = self.upstream_timeout;
                let Some(answer) = upstream::forward(&servers, &upstream_query, timeout).await else {
                    return Ok(response.send_response(error(ResponseCode::ServFail)).await?);
                };
                metadata.response_code = answer.metadata.response_code;
                metadata.authentic_data = answer.metadata.authentic_data;
                let message = builder().build(
                    metadata,
                    &answer.answers,
                    &answer.authorities,
                    None::<&Record>,
                    &answer.additionals,
                );
                Ok(response.send_response(message).await?)
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        match self.respond(request, &mut response).await {
            Ok(info) => info,
            Err(error) => {
                // Sending failed (the client went away); there is nobody left to tell.
                tracing::debug!(error = format!("{error:#}"), "answering a dns question");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
            }
        }
    }
}

fn build(records: &Records) -> Zone {
    let (zone, skipped) = Zone::new(records);
    if skipped > 0 {
        tracing::warn!(skipped, "dns records skipped: names that are not dns labels");
    }
    zone
}
