//! What an operator sees when something goes wrong (issue 9, items 19 to 22): one line per error
//! or a JSON error document, the same exit codes in both formats, no panic text, and a closed
//! stdout that is not an error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_security::tde::{TdeConfig, TdeSubsystem};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_heliosdb-cli");

/// The binary with a clean environment: no mode, config or passphrase from the caller, and only
/// errors logged (development mode logs a warning about the in-memory provider otherwise).
fn command(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env_remove("HELIOSDB_CONFIG")
        .env_remove("HELIOSDB_MEK_PASSPHRASE")
        .env_remove("HELIOSDB_MEK_PASSPHRASE_OLD")
        .env_remove("HELIOSDB_CLI_TEST_PANIC")
        .env("HELIOSDB_LOG", "error");
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    command(dir).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A development-mode configuration (in-memory provider) whose key store is `dir/keys`.
fn dev_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("dev.toml");
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{}/keys\"\nsecurity_mode = \"development\"\n",
            dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// The error document of a failed `--format json` command.
fn json_error(o: &Output) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}{}", stdout(o), stderr(o)));
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 1, "{v:#}");
    let err = &v["error"];
    assert_eq!(err.as_object().unwrap().len(), 2, "{v:#}");
    let kind = err["kind"].as_str().unwrap().to_string();
    let message = err["message"].as_str().unwrap().to_string();
    assert!(!kind.is_empty() && !message.is_empty(), "{v:#}");
    assert!(!message.contains('\n'), "{message}");
    (kind, message)
}

/// The one `error: ...` line of a failed text-format command.
fn text_error(o: &Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].trim_start_matches("error: ").to_string()
}

/// Runs `args` once as text and once with `--format json`: both fail with the same exit code
/// and message; returns the exit code, kind and message.
fn fails_alike(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let text = run(dir, args);
    let mut json_args = vec!["--format", "json"];
    json_args.extend_from_slice(args);
    let json = run(dir, &json_args);
    let code = text.status.code().unwrap();
    assert_ne!(code, 0, "{args:?} succeeded: {}", stdout(&text));
    assert_eq!(
        json.status.code(),
        Some(code),
        "{args:?}: {}",
        stderr(&json)
    );
    let line = text_error(&text);
    let (kind, message) = json_error(&json);
    assert_eq!(line, message, "{args:?}");
    assert!(!stderr(&json).contains("error:"), "{}", stderr(&json));
    (code, kind, message)
}

/// Item 22: with `--format json` every error is `{"error": {"kind", "message"}}` on stdout, with
/// the exit code of the text format, whose error is one line on stderr.
#[test]
fn errors_are_json_with_format_json_and_keep_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // A configuration the TOML parser rejects, one that validation rejects, a missing file.
    std::fs::write(d.join("bad.toml"), "cache_limit = -1\n").unwrap();
    let (code, kind, message) = fails_alike(d, &["--config", "bad.toml", "security", "status"]);
    assert_eq!((code, kind.as_str()), (1, "invalid_config"));
    assert!(message.contains("bad.toml:1:15: cache_limit"), "{message}");
    std::fs::write(d.join("zero.toml"), "cache_limit = 0\n").unwrap();
    let (code, kind, _) = fails_alike(d, &["--config", "zero.toml", "security", "status"]);
    assert_eq!((code, kind.as_str()), (1, "invalid_config"));
    let (code, kind, message) = fails_alike(
        d,
        &["--config", "/nonexistent/tde.toml", "security", "mek-info"],
    );
    assert_eq!((code, kind.as_str()), (1, "io"));
    assert!(message.contains("/nonexistent/tde.toml"), "{message}");

    // A failing operation.
    let cfg = dev_config(d);
    let cfg = cfg.to_str().unwrap();
    let (code, kind, message) = fails_alike(
        d,
        &[
            "--config",
            cfg,
            "security",
            "tek",
            "rotate",
            "public.nothing",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        kind.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "{kind}"
    );
    assert!(message.contains("public.nothing"), "{message}");

    // Production rules refusing quickstart.
    let (code, kind, _) = fails_alike(d, &["quickstart", "--production", "--dir", "prod"]);
    assert_eq!((code, kind.as_str()), (1, "passphrase_env_missing"));

    // An invalid command line: clap's usage text, or a JSON error, both exit 2.
    let text = run(d, &["security", "no-such-command"]);
    assert_eq!(text.status.code(), Some(2));
    let json = run(d, &["--format", "json", "security", "no-such-command"]);
    assert_eq!(json.status.code(), Some(2));
    let (kind, message) = json_error(&json);
    assert_eq!(kind, "usage");
    assert!(message.contains("no-such-command"), "{message}");
    let json = run(
        d,
        &["security", "status", "--format=json", "--no-such-flag"],
    );
    assert_eq!(json.status.code(), Some(2));
    assert_eq!(json_error(&json).0, "usage");
    // Help is not an error.
    let help = run(d, &["--format", "json", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("Usage"), "{}", stdout(&help));
}

/// Item 22: `quickstart --format json` prints one JSON document, and a second run reopens the
/// same keys.
#[test]
fn quickstart_honours_format_json() {
    let dir = tempfile::tempdir().unwrap();
    for (run_no, action) in [(1, "created"), (2, "reopened")] {
        let out = run(
            dir.path(),
            &["--format", "json", "quickstart", "--dir", "qs"],
        );
        assert!(out.status.success(), "run {run_no}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "run {run_no}: not one JSON document ({e}): {}",
                stdout(&out)
            )
        });
        assert_eq!(v["security_mode"], "development", "{v:#}");
        let teks = v["teks"].as_array().unwrap();
        assert_eq!(teks.len(), 3, "{v:#}");
        assert!(teks.iter().all(|t| t["action"] == action), "{v:#}");
        let pages = v["pages"].as_array().unwrap();
        assert_eq!(pages.len(), 3, "{v:#}");
        assert!(
            pages.iter().all(|p| p["moved_page_refused"] == true),
            "{v:#}"
        );
        assert_eq!(v["rotation"]["table"], "public.orders", "{v:#}");
        assert_eq!(
            v["rotation"]["active"],
            format!("tek:public.orders@v{}", run_no + 1),
            "{v:#}"
        );
        assert!(v["status"]["checklist"].is_array(), "{v:#}");
        assert!(v["key_stats"]["tables"].as_u64().unwrap() >= 3, "{v:#}");
        assert!(v["mek"]["id"].is_string(), "{v:#}");
    }
}

/// Item 19: stdout is a pipe whose reader has gone (`heliosdb-cli security status | true`):
/// every write fails with EPIPE. The command still ends with its own exit code, prints nothing
/// about it, and does not panic. Deterministic: the reader is closed before the child starts.
#[test]
fn a_closed_stdout_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dev_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let cases: [&[&str]; 5] = [
        &["--config", cfg, "security", "status"],
        &["--config", cfg, "--format", "json", "security", "status"],
        &["--config", cfg, "security", "key-stats"],
        &["--config", cfg, "security", "tek", "list", "--type", "all"],
        &["quickstart", "--dir", "qs"],
    ];
    for args in cases {
        // The code with a reader, for comparison.
        let normal = run(dir.path(), args);
        assert!(!normal.stdout.is_empty(), "{args:?}: no output to write");
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let closed = command(dir.path())
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            closed.status.code(),
            normal.status.code(),
            "{args:?}: {}",
            stderr(&closed)
        );
        assert!(
            normal.status.code() == Some(0) || normal.status.code() == Some(3),
            "{args:?}: {}",
            stderr(&normal)
        );
        assert!(
            stderr(&closed).is_empty(),
            "{args:?}: stderr: {}",
            stderr(&closed)
        );
    }
}

/// Item 19: a panic that reaches `main` is one line through the error path (JSON with
/// `--format json`), exit 70, with no panic banner or backtrace; a panic that a library catches
/// (as the key store catches the storage engine's) prints nothing at all.
#[test]
fn panics_are_one_line_through_the_error_path() {
    if !cfg!(debug_assertions) {
        // The HELIOSDB_CLI_TEST_PANIC hook exists in debug builds only.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dev_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let panicking = |json: bool, what: &str| {
        let mut c = command(dir.path());
        if json {
            c.args(["--format", "json"]);
        }
        c.args(["--config", cfg, "security", "tek", "list"])
            .env("HELIOSDB_CLI_TEST_PANIC", what)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    };

    let out = panicking(false, "boom\nsecond line of the panic");
    assert_eq!(out.status.code(), Some(70), "{}", stderr(&out));
    let line = text_error(&out);
    assert!(
        line.starts_with("internal error: boom second line of the panic"),
        "{line}"
    );
    assert!(!line.contains("panicked"), "{line}");

    let out = panicking(true, "boom");
    assert_eq!(out.status.code(), Some(70), "{}", stderr(&out));
    let (kind, message) = json_error(&out);
    assert_eq!(kind, "internal");
    assert!(message.starts_with("internal error: boom"), "{message}");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));

    // Caught inside: the command runs as usual and nothing is said about the panic.
    for json in [false, true] {
        let out = panicking(json, "caught");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
        assert!(!stdout(&out).contains("panic"), "{}", stdout(&out));
    }
}

/// Item 20: a key store held by another process is reported as in use, with its path, in both
/// formats (not as corruption with "restore it from a backup"); a damaged store is still
/// reported as corrupt.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_store_in_use_is_not_reported_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dev_config(dir.path());
    let store_dir = dir.path().join("keys");
    let config = TdeConfig::from_toml_file(&cfg).unwrap();
    let holder = TdeSubsystem::new(config).await.unwrap();
    holder
        .key_manager()
        .create_table_key("public.held")
        .await
        .unwrap();
    let cfg = cfg.to_str().unwrap();
    for args in [
        &["--config", cfg, "security", "tek", "create", "public.other"][..],
        &["--config", cfg, "security", "status"][..],
        &["--config", cfg, "security", "tek", "list"][..],
    ] {
        let (code, kind, message) = fails_alike(dir.path(), args);
        assert_eq!((code, kind.as_str()), (1, "in_use"), "{args:?}: {message}");
        assert!(
            message.contains("in use by another process"),
            "{args:?}: {message}"
        );
        assert!(message.contains("is HeliosDB running?"), "{message}");
        assert!(
            message.contains(store_dir.to_str().unwrap()),
            "{args:?}: {message}"
        );
        assert!(!message.to_lowercase().contains("backup"), "{message}");
        assert!(!message.to_lowercase().contains("corrupt"), "{message}");
    }
    drop(holder);

    // Real damage keeps its kind.
    let store = std::fs::read_dir(&store_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "redb"))
        .unwrap();
    std::fs::write(&store, vec![0x5a; 8192]).unwrap();
    let (code, kind, message) =
        fails_alike(dir.path(), &["--config", cfg, "security", "tek", "list"]);
    assert_eq!((code, kind.as_str()), (1, "corrupt"), "{message}");
    assert!(message.contains(store.to_str().unwrap()), "{message}");
}

/// Item 19 with a real panic: a store damaged so that the storage engine panics (the key store
/// catches it and reports corruption). The panic hook keeps the panic out of the output: one
/// `error:` line, or a JSON error, and no panic banner. The damage is found by flipping one byte
/// at the start of each page until the debug log (`HELIOSDB_LOG=debug`, where the hook logs
/// every panic) shows a caught panic: the engine's allocator-state page does that today.
#[test]
fn a_storage_engine_panic_prints_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let setup = run(d, &["quickstart", "--dir", "qs"]);
    assert!(setup.status.success(), "{}", stderr(&setup));
    let cfg = d.join("qs.toml");
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{q}/keys\"\nsecurity_mode = \"development\"\n\n\
             [secure_file_config]\nstorage_path = \"{q}/mek\"\n\
             passphrase_file = \"{q}/secrets/mek-passphrase.txt\"\n",
            q = d.join("qs").display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let list = ["--config", cfg, "security", "tek", "list"];
    assert!(run(d, &list).status.success());
    let store = d.join("qs/keys/tek-store.redb");
    let original = std::fs::read(&store).unwrap();

    let mut panicking = None;
    'pages: for page in (0..original.len()).step_by(4096) {
        for at in [page, page + 8] {
            let mut damaged = original.clone();
            damaged[at] ^= 0xff;
            std::fs::write(&store, &damaged).unwrap();
            let out = command(d)
                .args(list)
                .env("HELIOSDB_LOG", "debug")
                .output()
                .unwrap();
            if stderr(&out).contains("panic: ") {
                panicking = Some(at);
                break 'pages;
            }
        }
    }
    let Some(at) = panicking else {
        panic!(
            "no one-byte flip at a page start made the storage engine panic; this test needs a \
             new way to provoke one"
        );
    };

    let (code, kind, message) = fails_alike(d, &list);
    assert_eq!(
        (code, kind.as_str()),
        (1, "corrupt"),
        "byte {at}: {message}"
    );
    assert!(message.contains(store.to_str().unwrap()), "{message}");
    let out = command(d)
        .args(list)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
    assert_eq!(text_error(&out), message);
}

/// Exit code 5 without any server: a Vault provider at a refused loopback port is a retryable
/// `provider_unavailable`, so scripts can retry; a first start that fails so creates nothing.
#[test]
fn an_unreachable_provider_is_exit_code_5_in_both_formats() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, "not-a-real-token").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = dir.path().join("vault.toml");
    std::fs::write(
        &cfg,
        format!(
            "key_storage_path = \"{keys}\"\nsecurity_mode = \"development\"\n\
             provider_startup_wait_secs = 0\n\n[kms_config]\nprovider = \"vault\"\n\
             address = \"http://127.0.0.1:{port}\"\ntoken_file = \"{token}\"\n\
             timeout_secs = 2\nmax_retries = 0\n",
            keys = dir.path().join("keys").display(),
            token = token_file.display(),
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let o = command(dir.path())
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .args(["--config", cfg, "security", "tek", "create", "t"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&o)
    );
    let o = command(dir.path())
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .args([
            "--config", cfg, "--format", "json", "security", "tek", "create", "t",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(json_error(&o).0, "provider_unavailable");
    assert!(
        !dir.path().join("keys").exists(),
        "the failed start created the key store"
    );
}
