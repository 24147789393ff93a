//! TLS termination with a certificate made at test time (rcgen): HTTP/1.1 and HTTP/2 by ALPN,
//! a real TLS client and curl, reload without dropping connections, and clear start-up errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::pki::*;
use common::*;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tollgate::config::Config;
use tollgate::process::runtime::RunningGateway;

fn tls_lines(dir: &Path) -> String {
    format!(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string()
    )
}

type TlsClient =
    HyperClient<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

fn client(ca_pem: &str, http2: bool) -> TlsClient {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only();
    let connector = if http2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
    HyperClient::builder(TokioExecutor::new()).build(connector)
}

async fn chat(client: &TlsClient, port: u16) -> Result<(StatusCode, Version), String> {
    let request = Request::post(format!("https://localhost:{port}/openai/deployments/{DEPLOYMENT}/chat/completions"))
        .header("api-key", PRIMARY_KEY)
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap();
    let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
    let (status, version) = (response.status(), response.version());
    response.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok((status, version))
}

#[tokio::test]
async fn https_with_alpn_h2_and_http11_and_plain_http_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = pki("one");
    write(dir.path(), &first);
    let h = Harness::with(Setup { server: tls_lines(dir.path()), ..Default::default() }).await;
    let port = h.gateway.tls_addr.unwrap().port();
    assert_eq!(chat(&client(&first.ca_pem, true), port).await.unwrap(), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(chat(&client(&first.ca_pem, false), port).await.unwrap(), (StatusCode::OK, Version::HTTP_11));
    // Plain HTTP stays available on the other listener.
    assert_eq!(
        h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await.status,
        StatusCode::OK
    );
    // An untrusting client is refused at the handshake.
    let refused = chat(&client(&pki("stranger").ca_pem, true), port).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "refused for the certificate, not for something else: {refused}");

    if std::process::Command::new("curl").arg("--version").output().is_ok() {
        // curl blocks: off the runtime thread that serves the gateway.
        let ca = dir.path().join("ca.pem");
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "60", "--http2", "-w", "\n%{http_version}", "--cacert"])
                .arg(ca)
                .arg(format!("https://localhost:{port}/openai/deployments/{DEPLOYMENT}/chat/completions"))
                .args(["-H", &format!("api-key: {PRIMARY_KEY}"), "-H", "content-type: application/json", "-d", CHAT])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(text.contains("chat.completion") && text.trim_end().ends_with('2'), "{text}");
    }
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_without_dropping_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (pki("one"), pki("two"));
    write(dir.path(), &first);
    let h = Harness::with(Setup { server: tls_lines(dir.path()), ..Default::default() }).await;
    let port = h.gateway.tls_addr.unwrap().port();
    let old = client(&first.ca_pem, true);
    assert_eq!(chat(&old, port).await.unwrap().0, StatusCode::OK);

    write(dir.path(), &second);
    let control = Arc::clone(&h.gateway.control);
    tokio::task::spawn_blocking(move || control.reload(false)).await.unwrap().unwrap();

    assert_eq!(
        chat(&client(&second.ca_pem, true), port).await.unwrap().0,
        StatusCode::OK,
        "new handshakes get the new certificate"
    );
    let refused = chat(&client(&first.ca_pem, true), port).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "the old certificate is gone for new connections: {refused}");
    assert_eq!(chat(&old, port).await.unwrap().0, StatusCode::OK, "the open connection was kept");

    // A broken replacement is refused and the current certificate stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    let control = Arc::clone(&h.gateway.control);
    let error = tokio::task::spawn_blocking(move || control.reload(false)).await.unwrap().unwrap_err().to_string();
    assert!(error.contains("TLS certificate"), "{error}");
    assert_eq!(chat(&client(&second.ca_pem, true), port).await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn missing_unreadable_or_mismatched_certificates_fail_start_up_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (pki("one"), pki("two"));
    let start = |server: String| async move {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[admin]\nlisten = \"127.0.0.1:0\"\n[[deployments]]\nname = \"d\"\nmodel = \"azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct\"\nbackend = \"http://127.0.0.1:1\"\nkeys = [\"{}\"]\n",
            stored(PRIMARY_KEY)
        );
        let config = Config::parse(&text, "t.toml", &|_| None).unwrap();
        RunningGateway::start(&config).await.err().expect("start-up must fail").to_string()
    };
    let error = start(tls_lines(dir.path())).await;
    assert!(error.contains("cannot read the TLS certificate") && error.contains("cert.pem"), "{error}");

    std::fs::write(dir.path().join("cert.pem"), &first.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), "garbage").unwrap();
    let error = start(tls_lines(dir.path())).await;
    assert!(error.contains("private key") && error.contains("key.pem"), "{error}");

    std::fs::write(dir.path().join("key.pem"), &second.key_pem).unwrap();
    let error = start(tls_lines(dir.path())).await;
    assert!(error.contains("does not belong to the certificate"), "{error}");
}

#[tokio::test]
async fn https_backends_are_verified_against_a_private_ca_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let backend_pki = pki("backend");
    write(dir.path(), &backend_pki);
    let mock = tollgate::process::mock_backend::MockOptions {
        tls: Some((dir.path().join("cert.pem"), dir.path().join("key.pem"))),
        ..Default::default()
    };
    let port = {
        let probe = tollgate::process::mock_backend::MockBackend::start(([127, 0, 0, 1], 0).into(), mock.clone())
            .await
            .unwrap();
        assert!(probe.url().starts_with("https://"));
        let port = probe.addr.port();
        probe.stop().await;
        port
    };
    let backend =
        tollgate::process::mock_backend::MockBackend::start(([127, 0, 0, 1], port).into(), mock).await.unwrap();
    let ca = dir.path().join("ca.pem").display().to_string();
    let url = format!("https://localhost:{port}");
    let more = format!(
        "[[deployments]]\nname = \"private\"\nmodel = \"azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct\"\nbackend = \"{url}\"\nbackend_ca_file = {ca:?}\nkeys = [\"{k}\"]\n\
         [[deployments]]\nname = \"private-h2\"\nmodel = \"m2\"\nbackend = \"{url}\"\nbackend_ca_file = {ca:?}\nbackend_http2 = true\nkeys = [\"{k}\"]\n\
         [[deployments]]\nname = \"public-roots\"\nmodel = \"m3\"\nbackend = \"{url}\"\nkeys = [\"{k}\"]\n",
        k = stored(OTHER_KEY)
    );
    let h = Harness::with(Setup { more_deployments: more, ..Default::default() }).await;
    for (name, version) in [("private", "HTTP/1.1"), ("private-h2", "HTTP/2")] {
        let reply = h
            .client
            .post(
                &h.url(&format!("/openai/deployments/{name}/chat/completions")),
                &[("api-key", OTHER_KEY), ("x-mock-echo", "1")],
                CHAT,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
        assert_eq!(reply.header("x-mock-echo-version"), version);
    }
    // Without the private CA the backend's certificate is not trusted: 502, saying why.
    let reply = h
        .client
        .post(&h.url("/openai/deployments/public-roots/chat/completions"), &[("api-key", OTHER_KEY)], CHAT)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.text().to_lowercase().contains("certificate"), "{}", reply.text());
    drop(backend);
}

#[test]
fn a_bad_backend_ca_file_is_a_config_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not pem").unwrap();
    let text = format!(
        "[[deployments]]\nname = \"d\"\nmodel = \"azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct\"\nbackend = \"https://x\"\nbackend_ca_file = {:?}\nkeys = [\"{}\"]\n",
        dir.path().join("missing.pem").display().to_string(),
        stored(PRIMARY_KEY)
    );
    let error = Config::parse(&text, "t.toml", &|_| None).unwrap_err();
    assert_eq!(error.field, "deployments[0].backend_ca_file");
    assert!(error.message.contains("cannot read the CA file"), "{error}");
}

#[tokio::test]
async fn a_reload_that_changes_a_listener_says_a_restart_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &pki("one"));
    let h = Harness::start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let moved = text.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1);
    let with_tls = moved.replacen("[admin]", &format!("{}\n[admin]", tls_lines(dir.path())), 1);
    std::fs::write(&h.config_path, &with_tls).unwrap();
    let control = Arc::clone(&h.gateway.control);
    let report = tokio::task::spawn_blocking(move || control.reload(false)).await.unwrap().unwrap();
    let said = report.restart_needed.join("\n");
    assert!(said.contains("[server] listen changed from 127.0.0.1:0 to 127.0.0.1:1"), "{said}");
    assert!(said.contains("[server.tls] was added") && said.contains("restart"), "{said}");
    assert!(h.gateway.tls_addr.is_none());
    // The running listener still serves, and the answer of POST /reload says the same.
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK);
    let token = "ReloadOwnerToken0123456789abcdef";
    let with_token =
        format!("{with_tls}\n[[admin.tokens]]\nname = \"ops\"\nrole = \"owner\"\ntoken = \"{}\"\n", stored(token));
    std::fs::write(&h.config_path, &with_token).unwrap();
    let control = Arc::clone(&h.gateway.control);
    tokio::task::spawn_blocking(move || control.reload(false)).await.unwrap().unwrap();
    let url = format!("http://{}/reload", h.gateway.admin_addr);
    let reply = h.client.call(http::Method::POST, &url, &[("authorization", &format!("Bearer {token}"))], "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let json = reply.json();
    let needed = json["restartNeeded"].as_array().unwrap();
    assert!(needed.iter().any(|s| s.as_str().unwrap().contains("[server] listen")), "{json}");
}

#[tokio::test]
async fn the_start_up_banner_names_the_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &pki("one"));
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}[admin]\nlisten = \"127.0.0.1:0\"\n[[deployments]]\nname = \"d\"\nmodel = \"azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct\"\nbackend = \"http://127.0.0.1:9\"\nkeys = [\"{}\"]\n",
            tls_lines(dir.path()),
            stored(PRIMARY_KEY)
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::process::BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _reaper = common::process::Reaper(vec![child.id()]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("admin:") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() == 0 {
            break;
        }
        banner.push_str(&line);
    }
    let tls = banner.split("tls:").nth(1).unwrap_or_else(|| panic!("no tls line: {banner}"));
    let addr: std::net::SocketAddr =
        tls.split_whitespace().next().unwrap().trim_start_matches("https://").parse().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_ok(), "something listens on the TLS address {addr}");
    common::process::signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}
