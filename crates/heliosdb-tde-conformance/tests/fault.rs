//! The fault proxy against servers written here: a TCP echo server (raw mode) and a tiny
//! HTTP/1.1 server that answers `<method> <path> <body>` (plain-HTTP mode).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::fault::{FaultProxy, Response};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous deadline for a condition that should hold at once.
const DEADLINE: Duration = Duration::from_secs(30);

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Reads one HTTP message head and its `content-length` body from `s` (`buf` keeps extra
/// bytes). `None` at end of stream or on an error.
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let msg: Vec<u8> = buf.drain(..end + len).collect();
    Some((head, msg[end..].to_vec()))
}

/// A keep-alive HTTP/1.1 server answering 200 with `<method> <path> <body>`.
async fn http_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((head, body)) = read_message(&mut s, &mut buf).await {
                    let first = head.lines().next().unwrap().to_string();
                    let mut parts = first.split(' ');
                    let answer = format!(
                        "{} {} {}",
                        parts.next().unwrap(),
                        parts.next().unwrap(),
                        String::from_utf8_lossy(&body)
                    );
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One request on `s`; the status line, the head and the body of the answer, or `None` if the
/// connection failed.
async fn request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(String, String)> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let (head, body) = read_message(s, &mut buf).await?;
    Some((head, String::from_utf8(body).unwrap()))
}

async fn connect(p: &FaultProxy) -> TcpStream {
    TcpStream::connect(p.addr()).await.unwrap()
}

#[tokio::test]
async fn a_raw_proxy_forwards_bytes_both_ways_and_a_cut_drops_and_refuses_connections() {
    let p = FaultProxy::start(echo_server().await).await.unwrap();
    let mut s = connect(&p).await;
    s.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");

    p.cut();
    assert!(p.is_cut());
    // The open connection is dropped: a read ends (EOF or reset) instead of echoing.
    let _ = s.write_all(b"again").await;
    let mut buf = [0u8; 5];
    let r = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("the cut connection was not closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // New connections are refused.
    assert!(TcpStream::connect(p.addr()).await.is_err());

    p.restore();
    let mut s = connect(&p).await;
    s.write_all(b"back").await.unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"back");
}

#[tokio::test]
async fn an_http_proxy_logs_requests_by_method_and_path() {
    let p = FaultProxy::start_http(http_server().await).await.unwrap();
    assert!(p.url().starts_with("http://127.0.0.1:"));
    let mut s = connect(&p).await;
    let (head, body) = request(&mut s, "POST", "/v1/transit/encrypt/k1?x=1", "abc")
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "POST /v1/transit/encrypt/k1?x=1 abc");
    // Same connection (keep-alive), another request.
    let (_, body) = request(&mut s, "GET", "/v1/sys/health", "").await.unwrap();
    assert_eq!(body, "GET /v1/sys/health ");
    let mut s2 = connect(&p).await;
    request(&mut s2, "POST", "/v1/transit/rewrap/k1", "x")
        .await
        .unwrap();
    assert_eq!(
        p.requests(),
        vec![
            ("POST".to_string(), "/v1/transit/encrypt/k1".to_string()),
            ("GET".to_string(), "/v1/sys/health".to_string()),
            ("POST".to_string(), "/v1/transit/rewrap/k1".to_string()),
        ]
    );
    assert_eq!(p.requests_to("/v1/transit/"), 2);
    assert_eq!(p.requests_to("decrypt"), 0);
    p.clear_requests();
    assert!(p.requests().is_empty());
}

#[tokio::test]
async fn an_http_proxy_answers_the_next_requests_itself() {
    let p = FaultProxy::start_http(http_server().await).await.unwrap();
    let mut s = connect(&p).await;
    p.respond_next(1, Response::service_unavailable());
    p.respond_next(2, Response::too_many_requests(7));
    let (head, body) = request(&mut s, "GET", "/a", "").await.unwrap();
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(body.contains("errors"), "{body}");
    for _ in 0..2 {
        let (head, _) = request(&mut s, "GET", "/b", "").await.unwrap();
        assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 7"),
            "{head}"
        );
    }
    // The queue is used up: the upstream answers again, on the same connection.
    let (head, body) = request(&mut s, "GET", "/c", "").await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "GET /c ");

    // Only for a path: other requests pass.
    p.respond_next_to(
        "/decrypt/",
        1,
        Response::new(400).json(r#"{"errors":["message authentication failed"]}"#),
    );
    let (head, _) = request(&mut s, "POST", "/v1/transit/encrypt/k", "")
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, body) = request(&mut s, "POST", "/v1/transit/decrypt/k", "")
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(body.contains("authentication failed"), "{body}");
    assert_eq!(p.requests().len(), 6, "answered requests are logged too");
}

#[tokio::test]
async fn cut_after_requests_lets_n_through_then_cuts_until_restored() {
    let p = FaultProxy::start_http(http_server().await).await.unwrap();
    p.cut_after_requests(2);
    let mut s = connect(&p).await;
    assert!(request(&mut s, "GET", "/1", "").await.is_some());
    assert!(request(&mut s, "GET", "/2", "").await.is_some());
    assert!(request(&mut s, "GET", "/3", "").await.is_none());
    assert!(p.is_cut());
    assert!(TcpStream::connect(p.addr()).await.is_err());
    p.restore();
    let mut s = connect(&p).await;
    let (_, body) = request(&mut s, "GET", "/4", "").await.unwrap();
    assert_eq!(body, "GET /4 ");
    // The log shows the refused request too.
    assert_eq!(p.requests_to("/3"), 1);
}

#[tokio::test]
async fn a_cut_drops_an_idle_keep_alive_connection() {
    let p = FaultProxy::start_http(http_server().await).await.unwrap();
    let mut s = connect(&p).await;
    assert!(request(&mut s, "GET", "/x", "").await.is_some());
    p.cut();
    assert!(request(&mut s, "GET", "/y", "").await.is_none());
    p.restore();
    assert!(
        request(&mut connect(&p).await, "GET", "/z", "")
            .await
            .is_some()
    );
    assert_eq!(p.requests_to("/z"), 1);
}

#[tokio::test]
async fn delay_holds_each_request_back() {
    let p = FaultProxy::start_http(http_server().await).await.unwrap();
    let d = Duration::from_millis(200);
    p.delay(d);
    let mut s = connect(&p).await;
    let started = Instant::now();
    request(&mut s, "GET", "/slow", "").await.unwrap();
    // A lower bound only: it holds however slow the machine is.
    assert!(started.elapsed() >= d);
    p.delay(Duration::ZERO);
    request(&mut s, "GET", "/fast", "").await.unwrap();
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_port() {
    let p = FaultProxy::start(echo_server().await).await.unwrap();
    let addr = p.addr();
    let mut s = connect(&p).await;
    drop(p);
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("the connection outlived the proxy");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the port stayed open");
        tokio::task::yield_now().await;
    }
}

/// An HTTP/1.1 server that behaves like moto: it answers one request per connection with
/// `Connection: close` and then closes, echoing `<X-Amz-Target> <body>`.
async fn closing_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if let Some((head, body)) = read_message(&mut s, &mut buf).await {
                    let target = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("x-amz-target")
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_else(|| "-".into());
                    let answer = format!("{target} {}", String::from_utf8_lossy(&body));
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                }
                // Dropped: the connection closes after one answer.
            });
        }
    });
    addr
}

/// One AWS JSON-protocol call (`POST /` with `X-Amz-Target: TrentService.<action>`) on `s`.
async fn aws_call(s: &mut TcpStream, action: &str, body: &str) -> Option<(String, String)> {
    let req = format!(
        "POST / HTTP/1.1\r\nhost: kms.us-east-1.amazonaws.com\r\n\
         content-type: application/x-amz-json-1.1\r\nx-amz-target: TrentService.{action}\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let (head, body) = read_message(s, &mut buf).await?;
    Some((head, String::from_utf8(body).unwrap()))
}

/// The values of header `name` in a response head (names compared case-insensitively).
fn header<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

#[tokio::test]
async fn aws_targets_are_logged_and_counted_by_action() {
    let p = FaultProxy::start_http(closing_server().await)
        .await
        .unwrap();
    for action in [
        "Encrypt",
        "ReEncrypt",
        "ReEncrypt",
        "Decrypt",
        "DescribeKey",
    ] {
        let (head, body) = aws_call(&mut connect(&p).await, action, "{}")
            .await
            .unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, format!("TrentService.{action} {{}}"));
    }
    request(&mut connect(&p).await, "GET", "/moto-api/", "")
        .await
        .unwrap();
    // "Encrypt" is not "ReEncrypt": the action after the last dot must match exactly.
    assert_eq!(p.requests_for_target("Encrypt"), 1);
    assert_eq!(p.requests_for_target("ReEncrypt"), 2);
    assert_eq!(p.requests_for_target("TrentService.ReEncrypt"), 2);
    assert_eq!(p.requests_for_target("Decrypt"), 1);
    assert_eq!(p.requests_for_target("GenerateDataKey"), 0);
    let log = p.request_log();
    assert_eq!(log.len(), 6);
    assert_eq!(log[1].method, "POST");
    assert_eq!(log[1].path, "/");
    assert_eq!(log[1].amz_target.as_deref(), Some("TrentService.ReEncrypt"));
    assert_eq!(log[5].amz_target, None);
    assert_eq!(p.requests_to("/moto-api/"), 1);
    // The (method, path) view is unchanged.
    assert_eq!(p.requests()[0], ("POST".to_string(), "/".to_string()));
    p.clear_requests();
    assert_eq!(p.requests_for_target("ReEncrypt"), 0);
}

#[tokio::test]
async fn the_next_calls_of_one_aws_action_get_a_canned_aws_error() {
    let p = FaultProxy::start_http(closing_server().await)
        .await
        .unwrap();
    p.respond_next_for_target(
        "ReEncrypt",
        2,
        Response::aws_error(400, "ThrottlingException", "Rate exceeded"),
    );
    // Another action passes to the upstream.
    let (head, body) = aws_call(&mut connect(&p).await, "Encrypt", "{}")
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "TrentService.Encrypt {}");
    // A canned answer keeps the connection open: both throttled calls on one connection.
    let mut s = connect(&p).await;
    for _ in 0..2 {
        let (head, body) = aws_call(&mut s, "ReEncrypt", "{}").await.unwrap();
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        assert_eq!(
            header(&head, "content-type"),
            ["application/x-amz-json-1.1"]
        );
        assert_eq!(header(&head, "x-amzn-errortype"), ["ThrottlingException"]);
        assert_eq!(
            body,
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#
        );
    }
    // Used up: the upstream answers the next one (and closes, as moto does).
    let (head, body) = aws_call(&mut s, "ReEncrypt", "{}").await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "TrentService.ReEncrypt {}");
    assert_eq!(
        p.requests_for_target("ReEncrypt"),
        3,
        "answered calls are logged"
    );

    // A 500 for a whole action, built by hand with the AWS content type kept.
    p.respond_next_for_target(
        "Decrypt",
        1,
        Response::new(500)
            .header("Content-Type", "application/x-amz-json-1.1")
            .json(r#"{"__type":"KMSInternalException","message":"boom"}"#),
    );
    let (head, body) = aws_call(&mut connect(&p).await, "Decrypt", "{}")
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 500 "), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        ["application/x-amz-json-1.1"]
    );
    assert!(body.contains("KMSInternalException"), "{body}");
}

#[test]
fn aws_errors_are_valid_json_whatever_the_message() {
    let r = Response::aws_error(400, "ValidationException", "bad \"key\" \\ here\n");
    assert_eq!(r.status, 400);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"__type":"ValidationException","message":"bad \"key\" \\ here\u000a"}"#
    );
    // `json` adds its content type only when none was set.
    let plain = Response::new(200).json("{}");
    assert_eq!(
        plain.headers,
        [("content-type".to_string(), "application/json".to_string())]
    );
}

#[tokio::test]
async fn many_short_connections_to_an_upstream_that_closes_after_each_answer() {
    let p = FaultProxy::start_http(closing_server().await)
        .await
        .unwrap();
    const CALLS: usize = 300;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let addr = p.addr();
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let body = format!("{{\"n\":{i}}}");
            let (head, answer) = aws_call(&mut s, "ReEncrypt", &body).await.unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert_eq!(header(&head, "connection"), ["close"]);
            assert_eq!(answer, format!("TrentService.ReEncrypt {body}"));
            // The proxy closes the client's side after the upstream closed its own.
            let mut rest = [0u8; 1];
            let end = tokio::time::timeout(DEADLINE, s.read(&mut rest))
                .await
                .expect("the connection stayed open after the upstream closed");
            assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
        });
        // At most 16 in flight.
        if tasks.len() >= 16 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(p.requests_for_target("ReEncrypt"), CALLS);
    assert_eq!(p.connections(), CALLS as u64);
}

#[tokio::test]
async fn a_call_on_a_connection_the_upstream_closed_fails_instead_of_hanging() {
    let p = FaultProxy::start_http(closing_server().await)
        .await
        .unwrap();
    let mut s = connect(&p).await;
    assert!(aws_call(&mut s, "Encrypt", "{}").await.is_some());
    // A client that ignores `Connection: close` and sends again on the same connection gets
    // the end of the stream, as it would from the upstream itself.
    let again = tokio::time::timeout(DEADLINE, aws_call(&mut s, "Decrypt", "{}"))
        .await
        .expect("a call on a closed upstream hung");
    assert!(again.is_none(), "{again:?}");
    // A new connection works.
    assert!(
        aws_call(&mut connect(&p).await, "Decrypt", "{}")
            .await
            .is_some()
    );
}
