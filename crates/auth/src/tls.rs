//! TLS credentials derived from the secret, and the two roles.
//!
//! Each secret yields two certificate authorities whose Ed25519 keys are
//! HKDF outputs of the secret: one issues node certificates, the other
//! client certificates. Every process issues itself a fresh leaf (a new
//! key each start) from the authority of its role, under its primary
//! secret; it trusts the authorities of every secret in its keyring.
//!
//! - A node's server asks for a client certificate but accepts a
//!   connection without one, so that the gRPC layer can answer such a
//!   call with UNAUTHENTICATED instead of a bare handshake failure; a
//!   certificate that does not verify fails the handshake.
//! - A peer's role is the authority that issued its certificate
//!   ([`ServerCredentials::role_of`]).
//! - Clients check that a server holds a node certificate of the cluster:
//!   a node with another secret, or an impostor, fails the handshake.
//!
//! TLS 1.3 only, ring as the crypto provider.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{Keyring, Secret};

/// The name every node certificate carries and every client checks.
pub const NODE_NAME: &str = "idunno-node";
const CLIENT_NAME: &str = "idunno-client";

/// Who a TLS peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds a node certificate: may call node-to-node methods.
    Node,
    /// Holds a client certificate: may call client methods only.
    Client,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
        }
    }
}

/// Why credentials could not be built. A bug or a broken crypto library,
/// never a matter of input: everything is derived.
#[derive(Debug, thiserror::Error)]
#[error("tls credentials: {0}")]
pub struct TlsError(String);

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

/// ring, preferring AES-128-GCM: as strong as this threat model needs and
/// about a third cheaper per byte than AES-256-GCM (rustls's first
/// choice), which shows on bulk SDFS transfers that cross TLS at every hop.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
    Arc::new(p)
}

/// One authority: its certificate and the issuer that signs with its key.
struct Authority {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// PKCS#8 v1 framing of an Ed25519 private key (RFC 8410): a fixed
/// prefix and the 32-byte seed.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(seed);
    der
}

fn authority(secret: &Secret, role: Role) -> Result<Authority, TlsError> {
    let seed = secret.derive(&format!("idunno v1 {} certificate authority", role.label()));
    let der = ed25519_pkcs8(&seed);
    let key =
        KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &rcgen::PKCS_ED25519).map_err(err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    // The key id in the name keeps two secrets' authorities apart in a
    // keyring (a verifier looks an issuer up by name).
    params
        .distinguished_name
        .push(DnType::CommonName, format!("idunno {} CA {}", role.label(), crate::secret::hex(&secret.key_id())));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[1]));
    let cert = params.self_signed(&key).map_err(err)?.der().clone();
    Ok(Authority { cert, issuer: Issuer::new(params, key) })
}

/// A fresh Ed25519 key and a certificate for it from `ca`.
fn leaf(ca: &Authority, role: Role) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    leaf_with(ca, role, &rcgen::PKCS_ED25519)
}

/// A fresh key of algorithm `alg` and a certificate for it from `ca`.
fn leaf_with(
    ca: &Authority,
    role: Role,
    alg: &'static rcgen::SignatureAlgorithm,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let key = KeyPair::generate_for(alg).map_err(err)?;
    let name = match role {
        Role::Node => NODE_NAME,
        Role::Client => CLIENT_NAME,
    };
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = match role {
        Role::Node => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &ca.issuer).map_err(err)?.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert, key))
}

fn roots(ring: &Keyring, roles: &[Role]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for secret in ring.all() {
        for role in roles {
            store.add(authority(secret, *role)?.cert).map_err(err)?;
        }
    }
    Ok(Arc::new(store))
}

fn client_config(ring: &Keyring, role: Role) -> Result<Arc<ClientConfig>, TlsError> {
    let (cert, key) = leaf(&authority(&ring.primary, role)?, role)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_root_certificates(roots(ring, &[Role::Node])?)
        .with_client_auth_cert(vec![cert], key)
        .map_err(err)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What a client process presents and trusts.
#[derive(Clone)]
pub struct ClientCredentials {
    /// For gRPC to nodes (ALPN h2).
    pub config: Arc<ClientConfig>,
}

impl ClientCredentials {
    pub fn new(ring: &Keyring, role: Role) -> Result<ClientCredentials, TlsError> {
        Ok(ClientCredentials { config: client_config(ring, role)? })
    }

    /// The name servers are checked against.
    pub fn server_name() -> ServerName<'static> {
        ServerName::DnsName(rustls::pki_types::DnsName::try_from(NODE_NAME).expect("a valid DNS name"))
    }
}

/// A certificate chain and key an operator gives for the node's HTTPS
/// server (one a browser trusts), in place of the derived one.
pub struct OperatorCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for OperatorCert {
    fn clone(&self) -> Self {
        OperatorCert { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl OperatorCert {
    /// Read PEM files: the chain (leaf first) and its private key. The
    /// error names the file and what is wrong with it.
    pub fn read(cert_file: &std::path::Path, key_file: &std::path::Path) -> Result<OperatorCert, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(cert_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError(format!("certificate file {}: {e}", cert_file.display())))?;
        if chain.is_empty() {
            return Err(TlsError(format!("certificate file {}: no certificate in it", cert_file.display())));
        }
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| TlsError(format!("key file {}: {e}", key_file.display())))?;
        // The pair must go together: a server built with a key that does
        // not match its certificate would fail every handshake instead.
        let signer = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| TlsError(format!("key file {}: {e}", key_file.display())))?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signer);
        certified.keys_match().map_err(|e| {
            TlsError(format!("key file {} does not belong to {}: {e}", key_file.display(), cert_file.display()))
        })?;
        Ok(OperatorCert { chain, key })
    }
}

/// What a node's servers present and accept.
#[derive(Clone)]
pub struct ServerCredentials {
    /// gRPC: asks for (but does not require) a certificate of either role.
    pub grpc: Arc<ServerConfig>,
    /// HTTP: no client certificate (browsers log in with the token);
    /// ALPN offers h2 and http/1.1.
    pub http: Arc<ServerConfig>,
    /// Verifies against the node authorities only: tells roles apart.
    nodes_only: Arc<dyn ClientCertVerifier>,
}

impl ServerCredentials {
    /// `http`: an operator's certificate for the HTTPS server; `None`: the
    /// derived node certificate serves HTTPS too.
    pub fn new(ring: &Keyring, http: Option<&OperatorCert>) -> Result<ServerCredentials, TlsError> {
        let ca = authority(&ring.primary, Role::Node)?;
        let (cert, key) = leaf(&ca, Role::Node)?;
        let either = WebPkiClientVerifier::builder_with_provider(roots(ring, &[Role::Node, Role::Client])?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(err)?;
        let nodes_only = WebPkiClientVerifier::builder_with_provider(roots(ring, &[Role::Node])?, provider())
            .build()
            .map_err(err)?;
        let builder = || {
            ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(err)
        };
        // Clients that do not offer Ed25519 in their handshake (gRPC's
        // BoringSSL: tritonclient.grpc) get an ECDSA P-256 certificate from
        // the same authority; idunno's own peers get the Ed25519 one.
        let (ecdsa_cert, ecdsa_key) = leaf_with(&ca, Role::Node, &rcgen::PKCS_ECDSA_P256_SHA256)?;
        let certified = |cert: CertificateDer<'static>, key: &PrivateKeyDer<'static>| {
            let signer = provider().key_provider.load_private_key(key.clone_key()).map_err(err)?;
            Ok::<_, TlsError>(Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signer)))
        };
        let by_scheme = ByScheme { ed25519: certified(cert.clone(), &key)?, ecdsa: certified(ecdsa_cert, &ecdsa_key)? };
        let mut grpc = builder()?.with_client_cert_verifier(either).with_cert_resolver(Arc::new(by_scheme));
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        // Browsers do not sign or verify with Ed25519 in TLS: the HTTPS
        // server's own key is ECDSA P-256 (its certificate still comes from
        // the node authority, which curl and scripts trust with
        // `idunno secret ca`).
        let (http_chain, http_key) = match http {
            Some(op) => (op.chain.clone(), op.key.clone_key()),
            None => {
                let (cert, key) = leaf_with(&ca, Role::Node, &rcgen::PKCS_ECDSA_P256_SHA256)?;
                (vec![cert], key)
            }
        };
        let mut http = builder()?.with_no_client_auth().with_single_cert(http_chain, http_key).map_err(err)?;
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerCredentials { grpc: Arc::new(grpc), http: Arc::new(http), nodes_only })
    }

    /// The role of a peer from the certificates it presented in a
    /// handshake that succeeded (so they verified against one of our
    /// authorities); `None` when it presented none.
    pub fn role_of(&self, certs: Option<&[CertificateDer<'_>]>) -> Option<Role> {
        let (end, rest) = certs?.split_first()?;
        match self.nodes_only.verify_client_cert(end, rest, UnixTime::now()) {
            Ok(_) => Some(Role::Node),
            Err(_) => Some(Role::Client),
        }
    }
}

/// The gRPC server's certificate for a client: Ed25519 when the client
/// can verify it, else ECDSA P-256 (both from the node authority).
#[derive(Debug)]
struct ByScheme {
    ed25519: Arc<rustls::sign::CertifiedKey>,
    ecdsa: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for ByScheme {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if hello.signature_schemes().contains(&rustls::SignatureScheme::ED25519) {
            Some(self.ed25519.clone())
        } else {
            Some(self.ecdsa.clone())
        }
    }
}

/// A server configuration that refuses every handshake (it has no
/// certificate): what a server falls back to should it ever be started
/// without server credentials.
pub fn unusable_server_config() -> ServerConfig {
    #[derive(Debug)]
    struct NoCert;
    impl rustls::server::ResolvesServerCert for NoCert {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map(|b| b.with_no_client_auth().with_cert_resolver(Arc::new(NoCert)))
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.3"))
}

/// The authorities' certificates in PEM, for tools outside idunno (curl's
/// `--cacert`, a browser's trust store): the node authority of every
/// secret in the ring.
pub fn node_ca_pem(ring: &Keyring) -> Result<String, TlsError> {
    let mut out = String::new();
    for secret in ring.all() {
        let cert = authority(secret, Role::Node)?.cert;
        out.push_str(&pem(&cert));
    }
    Ok(out)
}

fn pem(cert: &CertificateDer<'_>) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in cert.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_the_same_wherever_derived() {
        let s = Secret::from_bytes([9; 32]);
        let a = authority(&s, Role::Node).unwrap();
        let b = authority(&s, Role::Node).unwrap();
        assert_eq!(a.cert, b.cert);
        assert_ne!(a.cert, authority(&s, Role::Client).unwrap().cert);
        assert_ne!(a.cert, authority(&Secret::from_bytes([8; 32]), Role::Node).unwrap().cert);
    }

    #[test]
    fn roles_follow_the_issuing_authority() {
        let ring = Keyring::new(Secret::from_bytes([9; 32]));
        let server = ServerCredentials::new(&ring, None).unwrap();
        let (node, _) = leaf(&authority(&ring.primary, Role::Node).unwrap(), Role::Node).unwrap();
        let (client, _) = leaf(&authority(&ring.primary, Role::Client).unwrap(), Role::Client).unwrap();
        assert_eq!(server.role_of(Some(&[node])), Some(Role::Node));
        assert_eq!(server.role_of(Some(&[client])), Some(Role::Client));
        assert_eq!(server.role_of(None), None);
        assert!(node_ca_pem(&ring).unwrap().starts_with("-----BEGIN CERTIFICATE-----\nMII"));
    }
}
