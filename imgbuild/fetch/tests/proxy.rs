//! The standard proxy variables are honoured. A test binary of its own: it sets process-wide
//! environment variables.

mod common;

use common::{fixture, options, sha256sum, Server};
use imgbuild_fetch::{fetch, Source};
use tempfile::TempDir;

#[test]
fn http_proxy_variable_is_used() {
    let proxy = Server::start();
    let data = fixture(300_000, 31);
    let dir = TempDir::new().unwrap();
    let sha = sha256sum(&data, dir.path());
    // The proxy serves the path; the host name only exists through the proxy.
    proxy.serve("/base.img.xz", data.clone());
    for var in [
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("http_proxy", format!("http://127.0.0.1:{}", proxy.port()));
    std::env::set_var("HTTP_PROXY", format!("http://127.0.0.1:{}", proxy.port()));
    let url = "http://images.example.invalid/base.img.xz";
    let source = Source {
        url: url.to_string(),
        sha256: Some(sha),
        sha512: None,
        signature: None,
    };
    let got = fetch(&source, &options(&dir.path().join("cache"))).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, url, "the proxy got the absolute URL");
}
