//! Starting the signaling contenders: icegate-signal, and Janus (Debian's `janus`) with only
//! its WebSocket transport and the echotest plugin, configured by files written into a
//! directory of the harness's own (nothing system-wide is read or changed).

use crate::contender::{Kind, ServerSpec};
use crate::error::BenchError;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

/// Where Debian installs Janus's plugins and transports.
const JANUS_LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";

/// The certificate's file names in the contender's directory: PEM for the servers, DER for
/// the harness's clients, which trust exactly this certificate.
pub const CERT_PEM: &str = "cert.pem";
/// The private key (PEM).
pub const KEY_PEM: &str = "key.pem";
/// The certificate (DER).
pub const CERT_DER: &str = "cert.der";

/// The program, arguments and directory that start `kind` as a signaling server on `addr`.
pub fn signal_command(
    kind: Kind,
    spec: &ServerSpec,
    addr: SocketAddrV4,
    tls: bool,
    redis_url: Option<&str>,
) -> Result<(PathBuf, Vec<String>, Option<PathBuf>), BenchError> {
    let dir = std::env::temp_dir().join(format!(
        "icegate-bench-{}-{}-{}",
        kind.name(),
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
    write_certificate(&dir)?;
    let path = |name: &str| dir.join(name).display().to_string();
    let s = |v: &str| v.to_string();
    let (program, args) = match kind {
        Kind::Icegate => {
            let mut a = vec![
                s("--listen"),
                addr.to_string(),
                s("--anonymous"),
                // TURN credentials in every welcome, as in a deployment: an HMAC per session.
                s("--static-auth-secret"),
                spec.secret.clone(),
                s("--relay"),
                s("stun:127.0.0.1:3478"),
                s("--relay"),
                s("turn:127.0.0.1:3478?transport=udp"),
                // Every client comes from 127.0.0.1.
                s("--max-connections-per-ip"),
                s("1000000"),
                // Idle sessions are held without pongs; the fan-out's callers send more than a
                // browser would. Janus gets the equivalent (session_timeout 0).
                s("--idle-timeout"),
                s("3600"),
                s("--max-message-rate"),
                s("1000000"),
            ];
            if tls {
                a.extend([s("--cert"), path(CERT_PEM), s("--pkey"), path(KEY_PEM)]);
            } else {
                a.push(s("--plain-http"));
            }
            if let Some(url) = redis_url {
                a.extend([s("--redis-url"), s(url)]);
            }
            (spec.signal_bin.clone(), a)
        }
        Kind::Janus => {
            if !spec.janus_bin.exists() {
                return Err(BenchError::Contender(format!(
                    "{} not found (apt-get install janus)",
                    spec.janus_bin.display()
                )));
            }
            write_janus_config(&dir, addr, tls)?;
            (
                spec.janus_bin.clone(),
                vec![
                    s("--config"),
                    path("janus.jcfg"),
                    s("--configs-folder"),
                    dir.display().to_string(),
                    s("--disable-stdout"),
                    s("--disable-colors"),
                ],
            )
        }
        Kind::Coturn | Kind::Floor => {
            return Err(BenchError::Contender(format!(
                "{} is no signaling server",
                kind.name()
            )))
        }
    };
    Ok((program, args, Some(dir)))
}

/// A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost, the same for both
/// servers, so that their TLS handshakes cost the same signature.
fn write_certificate(dir: &Path) -> Result<(), BenchError> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| BenchError::Contender(format!("certificate: {e}")))?;
    for (name, bytes) in [
        (CERT_PEM, ck.cert.pem().into_bytes()),
        (KEY_PEM, ck.key_pair.serialize_pem().into_bytes()),
        (CERT_DER, ck.cert.der().to_vec()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| BenchError::io(&p, e))?;
    }
    Ok(())
}

/// Janus's configuration: its plugin and transport folders hold links to the echotest plugin
/// and the WebSocket transport only (loading every packaged plugin would add their memory and
/// threads to Janus's figures), sessions never time out (icegate-signal's idle timeout is
/// raised to match), logging is errors only.
fn write_janus_config(dir: &Path, addr: SocketAddrV4, tls: bool) -> Result<(), BenchError> {
    let link = |folder: &str, lib: &str| -> Result<(), BenchError> {
        let d = dir.join(folder);
        std::fs::create_dir_all(&d).map_err(|e| BenchError::io(&d, e))?;
        let target = Path::new(JANUS_LIB).join(folder).join(lib);
        let l = d.join(lib);
        if !l.exists() {
            std::os::unix::fs::symlink(&target, &l).map_err(|e| BenchError::io(&l, e))?;
        }
        Ok(())
    };
    link("plugins", "libjanus_echotest.so")?;
    link("transports", "libjanus_websockets.so")?;
    let none = dir.join("none");
    std::fs::create_dir_all(&none).map_err(|e| BenchError::io(&none, e))?;
    let d = dir.display();
    let main = format!(
        r#"general: {{
	configs_folder = "{d}"
	plugins_folder = "{d}/plugins"
	transports_folder = "{d}/transports"
	events_folder = "{d}/none"
	loggers_folder = "{d}/none"
	debug_level = 1
	session_timeout = 0
}}
certificates: {{
}}
media: {{
}}
nat: {{
	nice_debug = false
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
	broadcast = false
}}
"#
    );
    let (ip, port) = (addr.ip(), addr.port());
    let websockets = format!(
        r#"general: {{
	json = "compact"
	ws = {ws}
	ws_port = {port}
	ws_ip = "{ip}"
	wss = {tls}
	wss_port = {port}
	wss_ip = "{ip}"
}}
admin: {{
	admin_ws = false
	admin_wss = false
}}
certificates: {{
	cert_pem = "{d}/{CERT_PEM}"
	cert_key = "{d}/{KEY_PEM}"
}}
"#,
        ws = !tls,
    );
    for (name, text) in [
        ("janus.jcfg", main),
        ("janus.transport.websockets.jcfg", websockets),
        ("janus.plugin.echotest.jcfg", "general: {\n}\n".to_string()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| BenchError::io(&p, e))?;
    }
    Ok(())
}
