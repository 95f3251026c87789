//! Inbound TLS (`[tls]`): the certificate chain and key, loaded at start
//! and again by every reload that finds their files changed, so a renewed
//! certificate is served without a restart. New handshakes get the
//! certificate in force when they start; connections already open keep
//! the one they were made with (and a session resumed from before the
//! reload keeps its own). A reload whose files cannot be loaded is
//! refused, and the running certificate keeps being served.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::config::TlsConfig;

/// A TLS certificate or key that could not be loaded. Its text names the
/// file, never what the file holds (a malformed key file's bytes would
/// otherwise reach the log and `POST /reload`'s answer).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {what} from {path}")]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable PEM section of its kind.
    #[error("no usable {what} in {path}: {problem}")]
    Pem {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: String,
        /// What is wrong, in words of our own.
        problem: &'static str,
    },
    /// rustls refused the certificate and key (no certificate in the file,
    /// a key it cannot use, or a key that is not the certificate's).
    #[error("invalid TLS certificate or key")]
    Rustls(#[source] rustls::Error),
}

/// `error` in words that hold nothing of the file: the PEM parser's own
/// text quotes the line it stumbled on, which in a key file written on one
/// line (or with literal `\n`s) is the key.
fn pem_problem(error: &pki_types::pem::Error) -> &'static str {
    use pki_types::pem::Error;
    match error {
        Error::NoItemsFound => "no PEM section of that kind",
        Error::SectionTooLarge => "a PEM section over 256 MB",
        _ => "a malformed PEM section (its BEGIN or END line, or its base64)",
    }
}

/// `[tls]`'s two files as read, once each: what is checked and served is
/// what was hashed.
pub struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    cert_path: String,
    key_path: String,
    /// SHA-256 over both files, each with its length.
    digest: Vec<u8>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// How many times [`Files::read`] reads the pair before it takes what it
/// read last: one renewal landing between two of its reads costs one more.
const READS: usize = 3;

impl Files {
    /// Reads the files of `tls` as one pair: the certificate, the key, then
    /// the certificate again, until the certificate was the same before and
    /// after the key (at most three times). A renewal that replaces both
    /// files while they are read (a Kubernetes secret volume swaps them in
    /// one step) would otherwise pair the old certificate with the new key,
    /// and refuse a reload of files that are right.
    pub fn read(tls: &TlsConfig) -> Result<Self, TlsError> {
        Self::read_with(tls, |path| std::fs::read(path))
    }

    /// [`Files::read`] with `read` for reading a file.
    fn read_with(
        tls: &TlsConfig,
        mut read: impl FnMut(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Self, TlsError> {
        let mut read = |what, path: &Path| {
            read(path).map_err(|source| TlsError::Read {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        let mut cert = read("certificate", &tls.cert)?;
        let mut key = read("private key", &tls.key)?;
        for _ in 1..READS {
            let again = read("certificate", &tls.cert)?;
            if again == cert {
                break;
            }
            cert = again;
            key = read("private key", &tls.key)?;
        }
        let digest = {
            use sha2::{Digest, Sha256};
            let mut digest = Sha256::new();
            for bytes in [&cert, &key] {
                digest.update((bytes.len() as u64).to_be_bytes());
                digest.update(bytes);
            }
            digest.finalize().to_vec()
        };
        Ok(Self {
            cert,
            key,
            cert_path: tls.cert.display().to_string(),
            key_path: tls.key.display().to_string(),
            digest,
        })
    }

    /// What the two files hold, as one SHA-256: two reads that give the
    /// same digest read the same certificate and key.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// The chain (leaf first) and a key that matches the leaf.
    pub fn parse(self) -> Result<Certificate, TlsError> {
        let pem = |what, path: &str| {
            let path = path.to_owned();
            move |e: pki_types::pem::Error| TlsError::Pem {
                what,
                path,
                problem: pem_problem(&e),
            }
        };
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem("certificate", &self.cert_path))?;
        let key =
            PrivateKeyDer::from_pem_slice(&self.key).map_err(pem("private key", &self.key_path))?;
        let key = CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Rustls)?;
        // The chain's earliest end: an intermediate that ends first ends
        // the chain. Unknown if any of it does not read as X.509.
        let not_after = key
            .cert
            .iter()
            .map(|c| {
                x509_parser::parse_x509_certificate(c.as_ref())
                    .ok()
                    .map(|(_, parsed)| parsed.validity().not_after.timestamp())
            })
            .collect::<Option<Vec<i64>>>()
            .and_then(|ends| ends.into_iter().min());
        Ok(Certificate {
            digest: self.digest,
            key: Arc::new(key),
            not_after,
        })
    }
}

/// How long before a served certificate's end a warning is logged
/// ([`Certificate::expiry_problem`]): 14 days, as often as a reload or
/// restart comes.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// A certificate chain and its private key, read from `[tls]`'s files and
/// checked against each other, ready to be served.
#[derive(Clone)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
    /// The files' [`Files::digest`].
    digest: Vec<u8>,
    /// The chain's earliest notAfter, Unix seconds (`None` if a
    /// certificate of it does not read as X.509, which rustls has not
    /// asked).
    not_after: Option<i64>,
}

/// The fingerprint only: the key's own `Debug` is not ours to vouch for.
impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Reads and checks the files of `tls`: the chain (leaf first) and a
    /// key that matches the leaf. Errors name the file, never its contents.
    pub fn load(tls: &TlsConfig) -> Result<Self, TlsError> {
        Files::read(tls)?.parse()
    }

    /// The files' [`Files::digest`], as they were read.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// The SHA-256 of the leaf certificate's DER, in lowercase hex: what
    /// `openssl x509 -noout -fingerprint -sha256` prints (there in
    /// uppercase, with colons), to tell which certificate is served.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let leaf = self.key.cert.first().map_or(&[][..], |c| c.as_ref());
        base16ct::lower::encode_string(&Sha256::digest(leaf))
    }

    /// The chain's earliest notAfter (the leaf's, unless an intermediate
    /// ends first), in Unix seconds: the last moment clients that check
    /// the chain accept it.
    pub fn not_after(&self) -> Option<i64> {
        self.not_after
    }

    /// What is wrong with the chain's validity at Unix time `now`, if
    /// anything: it has expired, or expires within [`EXPIRY_WARNING`].
    pub fn expiry_problem(&self, now: i64) -> Option<String> {
        let end = self.not_after?;
        let at = self.not_after_text();
        let left = end.saturating_sub(now);
        if left < 0 {
            Some(format!(
                "expired at {at}: clients that check it refuse every handshake"
            ))
        } else if left.unsigned_abs() < EXPIRY_WARNING.as_secs() {
            let within = if left < 3600 {
                format!("{} min", left / 60)
            } else if left < 2 * 86_400 {
                format!("{} h", left / 3600)
            } else {
                format!("{} days", left / 86_400)
            };
            Some(format!(
                "expires at {at}, in {within}: renew its files and reload"
            ))
        } else {
            None
        }
    }

    /// [`Certificate::not_after`] as RFC 3339 text, for log lines (`-`
    /// when unknown).
    pub fn not_after_text(&self) -> String {
        self.not_after
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".into())
    }

    /// Logs a WARN line when [`Certificate::expiry_problem`] has something
    /// to say at Unix time `now` (at start, and after a reload that
    /// renewed the files or kept them).
    pub fn warn_if_ending(&self, now: i64) {
        if self.not_after.is_none() {
            tracing::warn!(
                sha256 = %self.fingerprint(),
                "TLS certificate served: its end cannot be read (a certificate of the chain is not X.509 as x509-parser reads it), so it is not watched"
            );
        }
        if let Some(problem) = self.expiry_problem(now) {
            tracing::warn!(
                sha256 = %self.fingerprint(),
                %problem,
                "TLS certificate served ends soon or has ended"
            );
        }
    }
}

/// The certificate new handshakes get: swapped whole by
/// [`ServerCertificate::replace`], read without a lock by each handshake.
pub struct ServerCertificate {
    current: ArcSwap<Certificate>,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate").finish_non_exhaustive()
    }
}

impl ServerCertificate {
    /// Serves `certificate` to the handshakes that start from now on.
    pub fn replace(&self, certificate: Certificate) {
        self.current.store(Arc::new(certificate));
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<Certificate> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

/// Inbound TLS as the listener serves it: the acceptor of its handshakes
/// (HTTP/1.1 over TLS 1.2 and 1.3), and the certificate they get, which a
/// reload replaces.
#[derive(Clone)]
pub struct Inbound {
    /// Accepts each connection's handshake.
    pub acceptor: TlsAcceptor,
    /// The certificate the handshakes get.
    pub certificate: Arc<ServerCertificate>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("certificate", &self.certificate.current())
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// Serves `certificate` until it is replaced.
    pub fn new(certificate: &Certificate) -> Result<Self, TlsError> {
        let served = Arc::new(ServerCertificate {
            current: ArcSwap::from_pointee(certificate.clone()),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_no_client_auth()
            .with_cert_resolver(served.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate: served,
        })
    }

    /// Loads `tls`'s files and serves them.
    pub fn load(tls: &TlsConfig) -> Result<Self, TlsError> {
        Self::new(&Certificate::load(tls)?)
    }
}

/// The cryptography of inbound TLS: *ring*, as for the upstream.
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a fresh self-signed certificate for `localhost` and its key
    /// into `dir` (`cert.pem`, `key.pem`); returns their `[tls]` and the
    /// certificate's DER.
    pub(crate) fn write_pair(dir: &Path) -> (TlsConfig, Vec<u8>) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let tls = TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&tls.cert, made.cert.pem()).expect("write");
        std::fs::write(&tls.key, made.signing_key.serialize_pem()).expect("write");
        (tls, made.cert.der().to_vec())
    }

    /// Writes a self-signed certificate for `localhost` ending at Unix
    /// time `not_after`, and its key, into `dir`; returns their `[tls]`.
    pub(crate) fn write_pair_ending(dir: &Path, not_after: i64) -> TlsConfig {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.not_before = time::OffsetDateTime::UNIX_EPOCH;
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).expect("time");
        let cert = params.self_signed(&key).expect("cert");
        let tls = TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&tls.cert, cert.pem()).expect("write");
        std::fs::write(&tls.key, key.serialize_pem()).expect("write");
        tls
    }

    /// The leaf's notAfter is read, and said of when it is near or past.
    #[test]
    fn a_certificate_near_or_past_its_end_is_said_to_be() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_800_000_000;
        let day = 24 * 3600;
        for (end, said) in [
            (now + 90 * day, None),
            (now + 15 * day, None),
            (now + 13 * day, Some("in 13 days")),
            (now + 30 * 3600, Some("in 30 h")),
            (now + 3600, Some("in 1 h")),
            (now + 1800, Some("in 30 min")),
            (now - 1, Some("expired at 2027-01-15T07:59:59Z")),
        ] {
            let certificate =
                Certificate::load(&write_pair_ending(dir.path(), end)).expect("loads");
            assert_eq!(certificate.not_after(), Some(end));
            let problem = certificate.expiry_problem(now);
            match said {
                None => assert_eq!(problem, None, "{end}"),
                Some(said) => {
                    let problem = problem.expect("said");
                    assert!(problem.contains(said), "{end}: {problem}");
                }
            }
        }
        let ending = Certificate::load(&write_pair_ending(dir.path(), now + 3600)).expect("loads");
        assert!(
            ending
                .expiry_problem(now)
                .expect("said")
                .starts_with(&format!("expires at {}", ending.not_after_text())),
        );
    }

    /// A chain whose intermediate ends before its leaf ends then.
    #[test]
    fn the_chain_ends_with_its_earliest_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_800_000_000;
        let at = |t: i64| time::OffsetDateTime::from_unix_timestamp(t).expect("time");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.not_before = time::OffsetDateTime::UNIX_EPOCH;
        ca.not_after = at(now + 5 * 24 * 3600);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        leaf.not_before = time::OffsetDateTime::UNIX_EPOCH;
        leaf.not_after = at(now + 90 * 24 * 3600);
        let leaf = leaf.signed_by(&leaf_key, &ca).expect("leaf");
        let tls = TlsConfig {
            cert: dir.path().join("chain.pem"),
            key: dir.path().join("key.pem"),
        };
        std::fs::write(&tls.cert, format!("{}{}", leaf.pem(), ca.pem())).expect("write");
        std::fs::write(&tls.key, leaf_key.serialize_pem()).expect("write");
        let certificate = Certificate::load(&tls).expect("loads");
        assert_eq!(certificate.not_after(), Some(now + 5 * 24 * 3600));
        assert!(certificate.expiry_problem(now).is_some());
    }

    /// Both files replaced between the reads of the certificate and the
    /// key: the certificate is read again, and the new pair is loaded.
    #[test]
    fn a_pair_renewed_while_it_is_read_is_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tls, _) = write_pair(dir.path());
        let old_cert = std::fs::read(&tls.cert).expect("read");
        let (_, new_der) = write_pair(dir.path());
        let mut reads = 0;
        let files = Files::read_with(&tls, |path| {
            reads += 1;
            // The first read of the certificate is of the old one; every
            // later read finds the renewed files.
            if reads == 1 {
                Ok(old_cert.clone())
            } else {
                std::fs::read(path)
            }
        })
        .expect("read");
        assert_eq!(reads, 5, "cert, key, cert (changed), key, cert (same)");
        let loaded = files.parse().expect("the renewed pair");
        assert_eq!(loaded.key.cert[0].as_ref(), &new_der[..]);
        assert_eq!(loaded.digest(), Files::read(&tls).expect("read").digest());

        // A pair renewed at every read of the key: the reads stop, and the
        // last pair read is refused.
        let mut reads = 0;
        let error = Files::read_with(&tls, |path| {
            reads += 1;
            if path == tls.key {
                write_pair(dir.path());
            }
            std::fs::read(path)
        })
        .expect("read")
        .parse()
        .expect_err("a pair renewed on every read");
        assert!(matches!(error, TlsError::Rustls(_)), "{error:?}");
        assert_eq!(reads, 2 * READS);
    }

    #[test]
    fn a_replaced_certificate_is_what_the_next_handshake_resolves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tls, first_der) = write_pair(dir.path());
        let first = Certificate::load(&tls).expect("loads");
        let served = Inbound::new(&first).expect("acceptor").certificate;
        assert_eq!(served.current().key.cert[0].as_ref(), &first_der[..]);

        let (tls, second_der) = write_pair(dir.path());
        let second = Certificate::load(&tls).expect("loads");
        assert_ne!(first.fingerprint(), second.fingerprint());
        served.replace(second.clone());
        assert_eq!(served.current().key.cert[0].as_ref(), &second_der[..]);
        assert_eq!(served.current().fingerprint(), second.fingerprint());
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_leaf() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().expect("tempdir");
        let (tls, der) = write_pair(dir.path());
        let fingerprint = Certificate::load(&tls).expect("loads").fingerprint();
        assert_eq!(fingerprint.len(), 64);
        let expected: String = Sha256::digest(&der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(fingerprint, expected);
    }

    #[test]
    fn a_key_of_another_certificate_or_an_empty_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tls, _) = write_pair(dir.path());
        let key = std::fs::read(&tls.key).expect("read");
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(&tls.key, other.signing_key.serialize_pem()).expect("write");
        let error = Certificate::load(&tls).expect_err("another certificate's key");
        assert!(
            matches!(
                error,
                TlsError::Rustls(rustls::Error::InconsistentKeys(
                    rustls::InconsistentKeys::KeyMismatch
                ))
            ),
            "{error:?}"
        );

        std::fs::write(&tls.key, key).expect("write");
        Certificate::load(&tls).expect("the pair again");
        std::fs::write(&tls.cert, "").expect("write");
        let error = Certificate::load(&tls).expect_err("no certificate");
        assert!(
            matches!(
                error,
                TlsError::Rustls(rustls::Error::NoCertificatesPresented)
            ),
            "{error:?}"
        );
    }

    /// A key file whose PEM is malformed (written on one line, or with
    /// literal `\n`s, as a secret store may hand it over) is refused in
    /// words of our own: the parser's text would quote the key.
    #[test]
    fn a_malformed_key_file_is_refused_without_its_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tls, _) = write_pair(dir.path());
        let pem = std::fs::read_to_string(&tls.key).expect("read");
        let base64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let one_line = pem.replace('\n', "");
        let escaped = pem.replace('\n', "\\n");
        let cut = pem.lines().take(2).collect::<Vec<_>>().join("\n");
        for (name, text) in [("one line", one_line), ("escaped", escaped), ("cut", cut)] {
            std::fs::write(&tls.key, &text).expect("write");
            let error = Certificate::load(&tls).expect_err(name);
            let said = crate::chain::ErrorChain(&error).to_string();
            assert_eq!(
                said,
                format!(
                    "no usable private key in {}: a malformed PEM section \
                     (its BEGIN or END line, or its base64)",
                    tls.key.display()
                ),
                "{name}"
            );
            assert!(!said.contains(&base64[..16]), "{name}: {said}");
        }
    }
}
