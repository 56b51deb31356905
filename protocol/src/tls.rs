//! The cluster's PKI: a cluster CA, node certificates that carry the node id, join tokens,
//! and the rustls configurations (TLS 1.3, mutual TLS against the cluster CA) that QUIC uses.
//!
//! Pure functions over PEM/DER plus rustls verifier objects; no sockets. The crypto provider
//! (`ring`) is always passed explicitly: with two providers in the tree rustls panics at first
//! use when it has to pick a default (NOTES.md).
//!
//! Every node holds the CA key, so that any node can admit a joiner (issue its certificate):
//! a node that is compromised can mint identities. Revocation by node id (the
//! [`RevocationList`]) is what `peer node remove NAME` feeds.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

/// ALPN of authenticated node-to-node connections: both sides present node certificates.
pub const ALPN_PEER: &[u8] = b"peer/1";
/// ALPN of the join handshake: the client presents no certificate, the server does.
pub const ALPN_JOIN: &[u8] = b"peer-join/1";
/// DNS suffix of the SAN that names a node in its certificate: `<node-id>.node.peer`.
pub const NODE_DNS_SUFFIX: &str = ".node.peer";
/// The server name dialed when the peer's node id is unknown; it names no node.
pub const ANY_NODE_NAME: &str = "any.peer";

/// Errors of the PKI. None changes any state: each operation either returns a value or nothing.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A node id is not a DNS label (`[a-z0-9-]`, 1 to 63 characters, no leading or trailing dash).
    #[error("invalid node id {0:?}: expected a DNS label of [a-z0-9-]")]
    InvalidNodeId(String),
    /// A certificate could not be generated or signed.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// PEM or DER input is malformed or missing.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A certificate names no node, or more than one.
    #[error("certificate names {0} nodes, expected exactly one")]
    NodeName(usize),
    /// A join token is not `<sha256 hex of CA DER>.<secret>`.
    #[error("malformed join token: expected <64 hex digits>.<secret>")]
    Token,
    /// rustls refused the configuration.
    #[error("cannot build tls configuration: {0}")]
    Config(String),
}

fn malformed(what: &'static str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Malformed { what, detail: e.to_string() }
}

/// The crypto provider every config and verifier of peer uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster's certificate authority, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A node's certificate (signed by the cluster CA) and key, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Certificates are valid from 1970 on: edge boxes without an RTC boot in 1970 (NOTES.md).
fn validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(1970, 1, 1);
    params.not_after = rcgen::date_time_ymd(4000, 1, 1);
}

impl ClusterCa {
    /// A new self-signed CA (ECDSA P-256) for the cluster `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, format!("peer cluster {cluster_id}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| malformed("ca certificate", e))
    }
}

/// Checks that a node id can be a DNS label, so it fits the certificate's SAN.
pub fn check_node_id(node_id: &str) -> Result<(), TlsError> {
    let ok = (1..=63).contains(&node_id.len())
        && node_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !node_id.starts_with('-')
        && !node_id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(TlsError::InvalidNodeId(node_id.to_owned()))
    }
}

/// Issues a certificate for `node_id` (SAN DNS `<node-id>.node.peer`, CN `<node-id>`), usable
/// as both TLS server and client, signed by the cluster CA.
pub fn issue_node_cert(ca: &ClusterCa, node_id: &str) -> Result<NodeCert, TlsError> {
    check_node_id(node_id)?;
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::DnsName(format!("{node_id}{NODE_DNS_SUFFIX}").try_into()?)];
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(NodeCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The node id a certificate names (its one SAN DNS name under `.node.peer`).
pub fn node_id_of(cert_der: &[u8]) -> Result<String, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| malformed("certificate", e))?;
    let san = cert.subject_alternative_name().map_err(|e| malformed("certificate", e))?;
    let mut ids: Vec<String> = san
        .map(|ext| ext.value.general_names.iter())
        .into_iter()
        .flatten()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => dns.strip_suffix(NODE_DNS_SUFFIX),
            _ => None,
        })
        .filter(|id| check_node_id(id).is_ok())
        .map(str::to_owned)
        .collect();
    match ids.len() {
        1 => Ok(ids.remove(0)),
        n => Err(TlsError::NodeName(n)),
    }
}

/// SHA-256 of a DER certificate, lowercase hex: what a join token pins.
pub fn ca_hash(cert_der: &[u8]) -> String {
    Sha256::digest(cert_der).iter().map(|b| format!("{b:02x}")).collect()
}

/// A join token, `<sha256 hex of CA cert DER>.<random secret>` (like kubeadm's discovery hash):
/// the joiner pins the CA by the hash, the admitting node checks the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret admits nodes: keep it out of logs.
        write!(f, "JoinToken({}.***)", self.ca_hash)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.ca_hash, self.secret)
    }
}

impl JoinToken {
    /// A new token for `ca` with a 128-bit random secret.
    pub fn generate(ca: &ClusterCa) -> Result<Self, TlsError> {
        let mut secret = [0u8; 16];
        provider().secure_random.fill(&mut secret).map_err(|e| TlsError::Config(format!("{e:?}")))?;
        let secret = secret.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { ca_hash: ca_hash(&ca.cert_der()?), secret })
    }

    pub fn parse(token: &str) -> Result<Self, TlsError> {
        let (hash, secret) = token.trim().split_once('.').ok_or(TlsError::Token)?;
        let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex || secret.is_empty() || secret.len() > 256 {
            return Err(TlsError::Token);
        }
        Ok(Self { ca_hash: hash.to_owned(), secret: secret.to_owned() })
    }

    /// Whether `secret` is this token's secret, compared in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Node ids whose certificates are refused, shared by the verifiers of one node and updated
/// when a node is removed. Cloning shares the set.
#[derive(Debug, Clone, Default)]
pub struct RevocationList(Arc<RwLock<BTreeSet<String>>>);

impl RevocationList {
    pub fn insert(&self, node_id: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(node_id.to_owned());
    }

    pub fn remove(&self, node_id: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(node_id);
    }

    pub fn contains(&self, node_id: &str) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(node_id)
    }

    pub fn snapshot(&self) -> BTreeSet<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a node presents and trusts: its certificate and key and the cluster CA.
#[derive(Debug)]
pub struct NodeIdentity {
    pub node_id: String,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl NodeIdentity {
    /// Loads an identity; the node id is read from the certificate.
    pub fn from_pem(ca_cert_pem: &str, node: &NodeCert) -> Result<Self, TlsError> {
        let ca = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
            .map_err(|e| malformed("ca certificate", e))?;
        let cert = CertificateDer::from_pem_slice(node.cert_pem.as_bytes())
            .map_err(|e| malformed("node certificate", e))?;
        let key =
            PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).map_err(|e| malformed("node key", e))?;
        Ok(Self { node_id: node_id_of(&cert)?, cert, key, ca })
    }

    /// The chain sent in handshakes: the node certificate, then the CA (so a joiner can pin it).
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone(), self.ca.clone()]
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| malformed("ca certificate", e))?;
        Ok(Arc::new(roots))
    }
}

/// The server name to dial a node by: its SAN name when the id is known, else [`ANY_NODE_NAME`].
pub fn server_name_for(node_id: Option<&str>) -> String {
    node_id.map_or_else(|| ANY_NODE_NAME.to_owned(), |id| format!("{id}{NODE_DNS_SUFFIX}"))
}

fn config_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// The server side of both ALPNs. Client certificates are optional at the TLS layer (the join
/// ALPN has none); the transport refuses a [`ALPN_PEER`] connection without one. A presented
/// certificate must chain to the cluster CA and name a node that is not revoked.
pub fn server_config(id: &NodeIdentity, revoked: &RevocationList) -> Result<rustls::ServerConfig, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(id.roots()?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(config_err)?;
    let verifier = Arc::new(NodeClientVerifier { inner, revoked: revoked.clone() });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain(), id.key.clone_key())
        .map_err(config_err)?;
    config.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_JOIN.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// The client side of [`ALPN_PEER`]: presents the node certificate; accepts a server whose
/// certificate chains to the CA, is not revoked, and names the node dialed (see
/// [`server_name_for`]) when that is known.
pub fn client_config(id: &NodeIdentity, revoked: &RevocationList) -> Result<rustls::ClientConfig, TlsError> {
    let inner =
        WebPkiServerVerifier::builder_with_provider(id.roots()?, provider()).build().map_err(config_err)?;
    let verifier = Arc::new(NodeServerVerifier { inner, revoked: revoked.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(id.chain(), id.key.clone_key())
        .map_err(config_err)?;
    config.alpn_protocols = vec![ALPN_PEER.to_vec()];
    Ok(config)
}

/// The client side of [`ALPN_JOIN`]: no client certificate; the server must present a node
/// certificate chaining to a CA whose DER hashes to the token's `ca_hash`.
pub fn join_client_config(token: &JoinToken) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(PinnedCaVerifier { ca_hash: token.ca_hash.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    Ok(config)
}

/// The node a certificate names, as a rustls error when it names none.
fn cert_node(cert: &CertificateDer<'_>) -> Result<String, rustls::Error> {
    node_id_of(cert).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
}

fn own_name(node_id: &str) -> Result<ServerName<'static>, rustls::Error> {
    ServerName::try_from(format!("{node_id}{NODE_DNS_SUFFIX}"))
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

fn schemes() -> Vec<SignatureScheme> {
    provider().signature_verification_algorithms.supported_schemes()
}

/// TLS 1.2 is never negotiated (the configs allow only 1.3); refuse if asked.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
}

#[derive(Debug)]
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: RevocationList,
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let node = cert_node(end_entity)?;
        if self.revoked.contains(&node) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revoked: RevocationList,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let node = cert_node(end_entity)?;
        if self.revoked.contains(&node) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        let dialed = server_name.to_str();
        if dialed != ANY_NODE_NAME && dialed.strip_suffix(NODE_DNS_SUFFIX) != Some(node.as_str()) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        self.inner.verify_server_cert(end_entity, intermediates, &own_name(&node)?, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// Trusts the CA that the server sends in its chain if its DER hashes to the token's hash.
#[derive(Debug)]
struct PinnedCaVerifier {
    ca_hash: String,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let unknown = || rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let ca = intermediates.iter().find(|c| ca_hash(c) == self.ca_hash).ok_or_else(unknown)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|_| unknown())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let node = cert_node(end_entity)?;
        inner.verify_server_cert(end_entity, intermediates, &own_name(&node)?, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn node_cert_names_its_node_and_chains_to_the_ca() {
        let ca = ClusterCa::generate("c1").unwrap();
        let node = issue_node_cert(&ca, "edge-1").unwrap();
        let id = NodeIdentity::from_pem(&ca.cert_pem, &node).unwrap();
        assert_eq!(id.node_id, "edge-1");
        assert_eq!(node_id_of(&id.cert).unwrap(), "edge-1");
        assert!(node_id_of(&id.ca).is_err(), "the CA names no node");
        assert!(node_id_of(b"garbage").is_err());
        assert!(issue_node_cert(&ca, "Bad_Name").is_err());
        assert!(server_config(&id, &RevocationList::default()).is_ok());
        assert!(client_config(&id, &RevocationList::default()).is_ok());
    }

    #[test]
    fn join_token_round_trips_and_compares_secrets() {
        let ca = ClusterCa::generate("c1").unwrap();
        let token = JoinToken::generate(&ca).unwrap();
        let parsed = JoinToken::parse(&token.to_string()).unwrap();
        assert_eq!(parsed, token);
        assert!(token.secret_matches(&parsed.secret));
        assert!(!token.secret_matches("nope"));
        assert!(!format!("{token:?}").contains(&token.secret));
        assert!(JoinToken::parse("abc.def").is_err());
        assert!(JoinToken::parse(&format!("{}.", token.ca_hash)).is_err());
    }
}
