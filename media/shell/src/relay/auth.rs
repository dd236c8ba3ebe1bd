//! Mutual authentication of the nodes of a cluster on the relay.
//!
//! Every node holds the cluster CA's key: either derived from the cluster
//! secret (HKDF-SHA256 -> an Ed25519 seed, so every node derives the same CA
//! with nothing to distribute) or read from a CA certificate and key file
//! pair. At start a node signs a fresh leaf certificate for itself with it;
//! peers verify each other's leaf against the CA in both directions (TLS 1.3,
//! client certificates required). The leaf names the node by a DNS name
//! derived from its node id, so the connecting side checks it reached the
//! node it meant and the accepting side checks the id the client announces.
//! A node with another secret, another CA, or none fails the handshake.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// ALPN of the relay protocol; a peer speaking another version is refused.
pub(crate) const ALPN: &[u8] = b"vela-relay/1";

/// Why the relay's credentials could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The cluster secret is too short to derive a key from.
    #[error("cluster.relay_secret must be at least 16 bytes")]
    SecretTooShort,
    /// A CA file could not be read or parsed.
    #[error("relay CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What was wrong (never the key's content).
        reason: String,
    },
    /// Certificate generation or TLS configuration failed.
    #[error("relay TLS setup: {0}")]
    Tls(String),
}

/// The cluster CA this node trusts and signs its own certificate with.
///
/// `Debug` prints no key material.
#[derive(Clone)]
pub struct RelayAuth {
    ca_cert: CertificateDer<'static>,
    ca_key_der: Arc<Vec<u8>>,
}

impl fmt::Debug for RelayAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayAuth").finish_non_exhaustive()
    }
}

/// What [`RelayAuth::node_credentials`] makes for one node: its chain and
/// key, and the roots it verifies peers against.
pub(crate) struct NodeCredentials {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Arc<RootCertStore>,
}

fn tls_err(e: impl fmt::Display) -> AuthError {
    AuthError::Tls(e.to_string())
}

/// The DNS name a node's certificate carries: node ids are free text (up to
/// 128 characters), so a hash of the id makes a valid name of fixed length.
pub(crate) fn node_dns_name(node_id: &str) -> String {
    let digest = Sha256::digest(node_id.as_bytes());
    let mut name = String::with_capacity(48);
    for b in &digest[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    name.push_str(".node.vela-relay");
    name
}

impl RelayAuth {
    /// The CA derived from the cluster secret (same secret, same CA on every
    /// node). The secret itself is not kept.
    pub fn from_secret(secret: &[u8]) -> Result<Self, AuthError> {
        if secret.len() < 16 {
            return Err(AuthError::SecretTooShort);
        }
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"vela relay ca"), secret);
        let mut seed = [0u8; 32];
        hk.expand(b"ed25519 ca key v1", &mut seed)
            .map_err(tls_err)?;
        // PKCS#8 v1 of an Ed25519 private key: a fixed prefix and the seed.
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&seed);
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
            &PKCS_ED25519,
        )
        .map_err(tls_err)?;
        // Fixed parameters (serial, validity, name): every node makes the
        // same CA certificate, although only its name and key matter to
        // verification.
        let mut params = CertificateParams::default();
        params.distinguished_name = ca_name();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from_slice(&[1]));
        let cert = params.self_signed(&key).map_err(tls_err)?;
        Ok(Self {
            ca_cert: cert.der().clone(),
            ca_key_der: Arc::new(key.serialize_der()),
        })
    }

    /// The CA of a certificate and key file pair (PEM), for clusters that
    /// manage their own CA.
    pub fn from_ca_files(cert_path: &Path, key_path: &Path) -> Result<Self, AuthError> {
        let file_err = |path: &Path, reason: String| AuthError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let ca_cert = CertificateDer::from_pem_file(cert_path)
            .map_err(|e| file_err(cert_path, e.to_string()))?;
        // The error of a key file names the failure, never the content.
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|e| file_err(key_path, e.to_string()))?;
        let key_pair = KeyPair::try_from(&key)
            .map_err(|e| file_err(key_path, format!("unsupported key: {e}")))?;
        // Checks that the certificate parses as a CA we can sign with.
        Issuer::from_ca_cert_der(&ca_cert, &key_pair)
            .map_err(|e| file_err(cert_path, e.to_string()))?;
        Ok(Self {
            ca_cert,
            ca_key_der: Arc::new(key_pair.serialize_der()),
        })
    }

    /// The CA certificate (DER), e.g. to compare nodes' configurations.
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }

    /// A fresh key and a certificate for `node_id` signed by the CA, good
    /// for both server and client authentication.
    pub(crate) fn node_credentials(&self, node_id: &str) -> Result<NodeCredentials, AuthError> {
        let ca_key = KeyPair::try_from(self.ca_key_der.as_slice()).map_err(tls_err)?;
        let issuer = Issuer::from_ca_cert_der(&self.ca_cert, ca_key).map_err(tls_err)?;
        let leaf_key = KeyPair::generate_for(&PKCS_ED25519).map_err(tls_err)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "vela relay node");
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::DnsName(
            node_dns_name(node_id).try_into().map_err(tls_err)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = params.signed_by(&leaf_key, &issuer).map_err(tls_err)?;
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert.clone()).map_err(tls_err)?;
        Ok(NodeCredentials {
            chain: vec![leaf.der().clone()],
            key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            roots: Arc::new(roots),
        })
    }
}

fn ca_name() -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "vela relay cluster CA");
    name
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The TLS configurations of a node: server (client certificates required)
/// and client (presents its own certificate, verifies the server's).
pub(crate) fn tls_configs(
    creds: NodeCredentials,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), AuthError> {
    let provider = provider();
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        creds.roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(tls_err)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(tls_err)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(creds.roots)
        .with_client_auth_cert(creds.chain, creds.key)
        .map_err(tls_err)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((server, client))
}

/// Whether the peer's leaf certificate names `node_id` (the accepting side's
/// check of the id a client announces; the chain was verified by TLS).
pub(crate) fn certificate_names_node(cert: &CertificateDer<'_>, node_id: &str) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return false;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return false;
    };
    let want = node_dns_name(node_id);
    san.value.general_names.iter().any(|name| {
        matches!(name, x509_parser::extensions::GeneralName::DNSName(dns) if dns.eq_ignore_ascii_case(&want))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_secret_derives_the_same_ca() {
        let a = RelayAuth::from_secret(b"0123456789abcdef-secret").expect("a");
        let b = RelayAuth::from_secret(b"0123456789abcdef-secret").expect("b");
        let c = RelayAuth::from_secret(b"0123456789abcdef-other!").expect("c");
        assert_eq!(a.ca_certificate(), b.ca_certificate());
        assert_ne!(a.ca_certificate(), c.ca_certificate());
        assert!(matches!(
            RelayAuth::from_secret(b"short"),
            Err(AuthError::SecretTooShort)
        ));
    }

    #[test]
    fn a_leaf_names_its_node_only() {
        let auth = RelayAuth::from_secret(b"0123456789abcdef-secret").expect("auth");
        let creds = auth.node_credentials("node one").expect("creds");
        assert!(certificate_names_node(&creds.chain[0], "node one"));
        assert!(!certificate_names_node(&creds.chain[0], "node two"));
        assert_eq!(node_dns_name("x").len(), 32 + ".node.vela-relay".len());
    }

    #[test]
    fn debug_shows_no_key() {
        let auth = RelayAuth::from_secret(b"0123456789abcdef-secret").expect("auth");
        assert_eq!(format!("{auth:?}"), "RelayAuth { .. }");
    }
}
