//! The crypto provider is always `ring`, passed explicitly rather than taken from the process
//! default, so that another crate enabling a second rustls provider cannot make us panic.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

/// The file name [`generate_self_signed`] gives the certificate.
pub const CERT_FILE: &str = "cert.pem";
/// The file name [`generate_self_signed`] gives the private key.
pub const KEY_FILE: &str = "key.pem";

/// Why a certificate or key could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be opened or read, or holds malformed PEM.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file holds no PKCS#8, RSA or SEC1 private key.
    #[error("{}: no PEM private key (PKCS#8, RSA or SEC1) found", path.display())]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// rustls refused the key, or the key does not belong to the certificate.
    #[error("{}: unusable private key for {}: {source}", key.display(), cert.display())]
    BadKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// [`generate_self_signed`] was given no names to certify.
    #[error("a self-signed certificate needs at least one DNS name or IP address")]
    NoNames,
    /// Certificate generation failed, e.g. on a name that is not a valid DNS name.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The crypto provider used for every config built here.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a PEM certificate chain and its PEM private key (PKCS#8, RSA or SEC1).
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Read { path, source }
    };

    let mut reader = BufReader::new(File::open(cert).map_err(read_error(cert))?);
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(read_error(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }

    let mut reader = BufReader::new(File::open(key).map_err(read_error(key))?);
    let private_key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut reader)
        .map_err(read_error(key))?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: key.to_path_buf(),
        })?;

    // `from_der` also checks that the key matches the certificate, so a half-updated pair of
    // files is refused here instead of failing every handshake later.
    let certified = CertifiedKey::from_der(chain, private_key, &provider()).map_err(|source| {
        TlsError::BadKey {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        }
    })?;
    Ok(Arc::new(certified))
}

/// A server certificate read from files that can be re-read (on SIGHUP) without a restart.
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    // Readers only clone the Arc, so a plain RwLock is cheap enough; handshakes are not hot.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads the certificate chain and key from their files for the first time.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let cert_path = cert.into();
        let key_path = key.into();
        let current = load_certified_key(&cert_path, &key_path)?;
        Ok(Self {
            cert_path,
            key_path,
            current: RwLock::new(current),
        })
    }

    /// Re-reads the files; on error the certificate served so far stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_certified_key(&self.cert_path, &self.key_path)?;
        // The guarded value is a single Arc, which a panicking writer cannot leave half-set,
        // so a poisoned lock is still safe to use.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// The certificate and key currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The certificate chain file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The private key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The DNS names (subjectAltName) of the certificate in use, its first, end-entity one;
    /// none when it does not parse. IP address entries are left out.
    pub fn dns_names(&self) -> Vec<String> {
        let current = self.current();
        let Some(leaf) = current.cert.first() else {
            return Vec::new();
        };
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
            return Vec::new();
        };
        let Ok(Some(names)) = parsed.subject_alternative_name() else {
            return Vec::new();
        };
        names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(name) => Some(name.to_string()),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key material stays out of Debug output, and therefore out of logs.
        f.debug_struct("ReloadableCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A TLS server config (TLS 1.2 and 1.3, no client auth) serving `resolver`'s certificate.
pub fn server_config(resolver: Arc<ReloadableCert>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Writes `cert.pem` and `key.pem` into `dir` for the given DNS names and IP addresses,
/// or returns the existing pair if both files are already there.
pub fn generate_self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    // Reusing the pair keeps a browser's "trust this certificate" exception valid across restarts.
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    if names.is_empty() {
        return Err(TlsError::NoNames);
    }

    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "icegate self-signed");
    let key_pair = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key_pair)?;

    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    // Key first, certificate last: the pair only counts as present once both exist, so an
    // interrupted run is redone next time instead of leaving a certificate without its key.
    write_atomically(&key_path, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// Writes `contents` to a temporary file created with `mode`, then renames it over `path`.
///
/// Creating the file with its final mode means the key is never readable by others, not even
/// for the moment between creation and a later chmod.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_error = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);

    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(mode);
        // A stale temporary file from an earlier run keeps its old mode when reopened.
        if let Ok(metadata) = std::fs::metadata(&temporary) {
            let mut permissions = metadata.permissions();
            permissions.set_mode(mode);
            std::fs::set_permissions(&temporary, permissions).map_err(write_error)?;
        }
    }
    #[cfg(not(unix))]
    let _ = mode;

    let mut file = options.open(&temporary).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_the_certificates_dns_san_entries() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["localhost", "127.0.0.1", "signal.example.test", "::1"].map(String::from);
        let (cert, key) = generate_self_signed(dir.path(), &names).unwrap();
        let cert = ReloadableCert::new(cert, key).unwrap();
        assert_eq!(cert.dns_names(), ["localhost", "signal.example.test"]);
    }
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn names() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    }

    fn client_trusting(cert: &Path) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let mut reader = BufReader::new(File::open(cert).unwrap());
        for der in rustls_pemfile::certs(&mut reader) {
            roots.add(der.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// Runs one handshake and a byte of application data; returns the certificate served.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: tokio_rustls::TlsConnector,
        name: &str,
    ) -> CertificateDer<'static> {
        let (client_io, server_io) = tokio::io::duplex(16 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let mut stream = acceptor.accept(server_io).await.unwrap();
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            stream.write_all(b"!").await.unwrap();
            stream.shutdown().await.unwrap();
        });
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let mut stream = client.connect(server_name, client_io).await.unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"!");
        server_task.await.unwrap();
        stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    fn first_cert(path: &Path) -> CertificateDer<'static> {
        let mut reader = BufReader::new(File::open(path).unwrap());
        let first = rustls_pemfile::certs(&mut reader).next().unwrap().unwrap();
        first
    }

    #[tokio::test]
    async fn self_signed_handshake_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = generate_self_signed(dir.path(), &names()).unwrap();
        let resolver = Arc::new(ReloadableCert::new(&cert, &key).unwrap());
        let server = server_config(Arc::clone(&resolver), &[b"h2", b"http/1.1"]);

        let old = first_cert(&cert);
        for name in ["localhost", "127.0.0.1", "::1"] {
            assert_eq!(
                handshake(Arc::clone(&server), client_trusting(&cert), name).await,
                old
            );
        }

        // Replace the files the way an ACME client would, then reload.
        let other = tempfile::tempdir().unwrap();
        let (new_cert, new_key) = generate_self_signed(other.path(), &names()).unwrap();
        std::fs::copy(&new_key, &key).unwrap();
        std::fs::copy(&new_cert, &cert).unwrap();
        resolver.reload().unwrap();

        let new = first_cert(&cert);
        assert_ne!(new, old);
        assert_eq!(
            handshake(Arc::clone(&server), client_trusting(&cert), "localhost").await,
            new
        );
    }

    #[test]
    fn failed_reload_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = generate_self_signed(dir.path(), &names()).unwrap();
        let resolver = ReloadableCert::new(&cert, &key).unwrap();
        let before = resolver.current();

        std::fs::write(&cert, "not a certificate\n").unwrap();
        let err = resolver.reload().unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("cert.pem"), "{err}");
        assert!(Arc::ptr_eq(&before, &resolver.current()));
    }

    #[test]
    fn mismatched_key_is_refused() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let (cert, _) = generate_self_signed(one.path(), &names()).unwrap();
        let (_, key) = generate_self_signed(two.path(), &names()).unwrap();
        let err = load_certified_key(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::BadKey { .. }), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = generate_self_signed(dir.path(), &names()).unwrap();
        let missing = dir.path().join("nope.pem");
        let err = load_certified_key(&cert, &missing).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");

        std::fs::write(&missing, "").unwrap();
        let err = load_certified_key(&cert, &missing).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
    }

    #[test]
    fn generation_reuses_existing_files_and_protects_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("tls");
        let (cert, key) = generate_self_signed(&target, &names()).unwrap();
        let first = std::fs::read(&cert).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again_cert, again_key) = generate_self_signed(&target, &names()).unwrap();
        assert_eq!((again_cert, again_key), (cert.clone(), key.clone()));
        assert_eq!(std::fs::read(&cert).unwrap(), first);

        // With only one of the two files there, the pair is made anew.
        std::fs::remove_file(&key).unwrap();
        generate_self_signed(&target, &names()).unwrap();
        assert_ne!(std::fs::read(&cert).unwrap(), first);
        load_certified_key(&cert, &key).unwrap();
    }

    #[test]
    fn no_names_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = generate_self_signed(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, TlsError::NoNames));
    }
}
