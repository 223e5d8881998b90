//! [`Response`]: an answer the proxy gives instead of the upstream, and its HTTP/1.1 encoding.

/// A response the proxy gives instead of the upstream
/// ([`FaultProxy::respond_next`](super::FaultProxy::respond_next)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Header lines (a `content-length` is added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no header and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body, with `content-type: application/json` unless a content type was set
    /// already (`.header("Content-Type", "application/x-amz-json-1.1").json(...)` keeps the
    /// AWS one).
    #[must_use]
    pub fn json(self, json: &str) -> Self {
        let typed = self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        let r = if typed {
            self
        } else {
            self.header("content-type", "application/json")
        };
        r.body(json.as_bytes().to_vec())
    }

    /// An AWS JSON-protocol error as KMS gives it: `status`, `content-type:
    /// application/x-amz-json-1.1`, the error type in `x-amzn-errortype` and the body
    /// `{"__type":"<error_type>","message":"<message>"}` (for example `400`,
    /// `ThrottlingException`, `Rate exceeded`; or `500`, `KMSInternalException`).
    pub fn aws_error(status: u16, error_type: &str, message: &str) -> Self {
        let body = format!(
            r#"{{"__type":"{}","message":"{}"}}"#,
            json_escape(error_type),
            json_escape(message)
        );
        Self::new(status)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", error_type)
            .header("x-amzn-requestid", "fault-proxy")
            .json(&body)
    }

    /// 503 Service Unavailable with a Vault-style JSON error body.
    pub fn service_unavailable() -> Self {
        Self::new(503).json(r#"{"errors":["service unavailable (fault proxy)"]}"#)
    }

    /// 429 Too Many Requests with `Retry-After: <seconds>`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(429)
            .header("retry-after", &retry_after_secs.to_string())
            .json(r#"{"errors":["rate limit exceeded (fault proxy)"]}"#)
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Fault Proxy",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("content-length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A JSON string's contents for `s` (quotes, backslashes and control characters escaped).
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}
