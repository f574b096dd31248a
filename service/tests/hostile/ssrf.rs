//! Finding: the URL allowlist was a string-prefix match, so userinfo named a
//! different host; and pointer fetches went through the environment's proxy,
//! which resolves names past the DNS guard.

use bytes::Bytes;

use crate::support::{
    Reply, Spawn, client, counting_server, echo_object, in_process, pointer_request, post_echo,
    recording_listener, spawn,
};

#[tokio::test]
async fn userinfo_does_not_smuggle_a_host_past_the_allowlist() {
    let secret = counting_server(
        "127.0.0.2",
        Reply::Body(Bytes::from(echo_object(b"internal secret")), None),
    )
    .await;
    let service = in_process(&[("KIT_URL_ALLOWLIST", "http://127.0.0.1")]).await;
    let smuggled = format!("http://127.0.0.1:x@{}/obj", secret.address);
    let answer = post_echo(&client(), &service.url, pointer_request(&smuggled), None).await;
    let message = answer.error_message().expect("an error batch");
    assert!(message.contains("userinfo"), "{message}");
    assert!(answer.echoed().is_none());
    // Through a redirect from an allowlisted origin: refused as well.
    let bouncer = counting_server("127.0.0.1", Reply::Redirect(smuggled.clone())).await;
    let answer = post_echo(
        &client(),
        &service.url,
        pointer_request(&format!("http://{}/obj", bouncer.address)),
        None,
    )
    .await;
    let message = answer.error_message().expect("an error batch");
    assert!(message.contains("userinfo"), "{message}");
    assert!(bouncer.hits() >= 1, "the allowlisted bouncer was asked");
    assert_eq!(secret.hits(), 0, "127.0.0.2 was never contacted");
}

#[tokio::test]
async fn pointer_fetches_ignore_the_environment_proxy() {
    let proxy = recording_listener().await;
    let proxy_url = format!("http://{}", proxy.address);
    let object = counting_server(
        "127.0.0.1",
        Reply::Body(Bytes::from(echo_object(b"fetched directly")), None),
    )
    .await;
    let service = spawn(Spawn {
        storage: true,
        env: &[
            ("KIT_URL_ALLOWLIST", "http://127.0.0.1"),
            ("HTTP_PROXY", &proxy_url),
            ("HTTPS_PROXY", &proxy_url),
            ("ALL_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("https_proxy", &proxy_url),
            ("all_proxy", &proxy_url),
        ],
        ..Spawn::default()
    });
    // A name no resolver knows: through the proxy it would be a CONNECT the
    // proxy resolves; direct, the resolver refuses it.
    let answer = post_echo(
        &client(),
        &service.url,
        pointer_request("https://kit-hostile-probe.invalid/obj"),
        None,
    )
    .await;
    assert!(answer.error_message().is_some(), "the fetch failed");
    // An allowlisted loopback object is fetched directly, not via the proxy.
    let answer = post_echo(
        &client(),
        &service.url,
        pointer_request(&format!("http://{}/obj", object.address)),
        None,
    )
    .await;
    assert_eq!(
        answer.echoed().as_deref(),
        Some(&b"fetched directly"[..]),
        "{:?}",
        answer.error_message()
    );
    assert!(object.hits() >= 1);
    assert_eq!(proxy.hits(), 0, "the proxy saw no connection");
}

#[tokio::test]
async fn a_configured_fetch_proxy_never_sees_a_refused_url() {
    let proxy = recording_listener().await;
    let proxy_url = format!("http://{}", proxy.address);
    let service = spawn(Spawn {
        storage: true,
        env: &[("KIT_FETCH_PROXY", &proxy_url)],
        ..Spawn::default()
    });
    for location in [
        "https://127.0.0.1/obj",
        "https://localhost/obj",
        "http://example.com/obj",
        "https://user:pw@example.com/obj",
        "https://kit-hostile-probe.invalid/obj",
    ] {
        let answer = post_echo(&client(), &service.url, pointer_request(location), None).await;
        assert!(answer.error_message().is_some(), "{location} refused");
    }
    assert_eq!(proxy.hits(), 0, "the proxy saw no refused URL");
}
