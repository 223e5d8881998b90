//! The heliosdb-cli binary against a real moto server (AWS KMS API), provisioned by `cargo
//! xtask test`: status, MEK information, TEK creation and the whole MEK rotation, in table and
//! JSON form, and exit code 5 while the endpoint is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_conformance::moto::{self, Moto, unique};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_heliosdb-cli");

/// A development configuration (moto speaks plain HTTP) for the key `key_arn` at `endpoint`,
/// with its own MEK id and alias prefix.
fn write_config(dir: &Path, moto: &Moto, endpoint: &str, key_arn: &str, mek: &str) -> PathBuf {
    let cfg = dir.join("tde.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
key_storage_path = "{keys}"
default_mek_id = "{mek}"
security_mode = "development"
rotation_grace_days = 0
provider_startup_wait_secs = 0
audit_log_path = "{audit}"

[kms_config]
provider = "aws"
region = "{region}"
key_id = "{key_arn}"
endpoint = "{endpoint}"
alias_prefix = "alias/{mek}"
max_attempts = 2
"#,
            keys = dir.join("keys").display(),
            audit = dir.join("audit/tde-audit.log").display(),
            region = moto.region,
        ),
    )
    .unwrap();
    cfg
}

fn cli(dir: &Path, cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .current_dir(dir)
        .env_remove("HELIOSDB_SECURITY_MODE")
        .env_remove("HELIOSDB_KMS_KEY_ID")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    text(&o)
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn the_mek_lifecycle_against_moto() {
    let Some(moto) = moto::moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mek = unique("cli_aws");
    let v1_arn = moto.create_key("heliosdb cli test v1");
    let cfg = write_config(d, &moto, &moto.endpoint, &v1_arn, &mek);

    // The first start adopts key_id as version 1 of the default MEK.
    let created = json(&cli(
        d,
        &cfg,
        &[
            "--format",
            "json",
            "security",
            "tek",
            "create",
            "public.users",
        ],
    ));
    assert_eq!(created[0]["wrapped_by"]["id"], mek.as_str(), "{created:#}");
    assert_eq!(created[0]["wrapped_by"]["version"], 1, "{created:#}");
    let t = ok(cli(
        d,
        &cfg,
        &["security", "tek", "create", "public.orders"],
    ));
    assert!(t.contains("tek:public.orders@v1"), "{t}");
    assert!(t.contains(&format!("{mek}@v1")), "{t}");
    assert!(
        moto.alias_target(&format!("alias/{mek}/{mek}/v1"))
            .ends_with(v1_arn.rsplit('/').next().unwrap()),
        "the v1 alias does not point at key_id"
    );

    // status: region, the active key and its KMS state. (Exit code 3: no audit log is not
    // a failing item here, but the checklist may fail other items in a temp dir.)
    let out = cli(d, &cfg, &["security", "status"]);
    let t = text(&out);
    assert!(t.contains("AWS KMS (us-east-1, alias/"), "{t}");
    assert!(t.contains("Provider health: healthy"), "{t}");
    assert!(
        t.contains(&format!("AWS region:      {}", moto.region)),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "Active key:      {v1_arn} (MEK version 1; Enabled)"
        )),
        "{t}"
    );
    assert!(
        t.contains("plain HTTP"),
        "the http:// warning is not shown: {t}"
    );
    let out = cli(d, &cfg, &["--format", "json", "security", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["provider_kind"], "aws-kms", "{status:#}");
    assert_eq!(status["provider_health"]["healthy"], true, "{status:#}");
    assert_eq!(
        status["aws_kms"]["region"],
        moto.region.as_str(),
        "{status:#}"
    );
    assert_eq!(
        status["aws_kms"]["endpoint"],
        moto.endpoint.as_str(),
        "{status:#}"
    );
    assert_eq!(
        status["aws_kms"]["active_key"],
        v1_arn.as_str(),
        "{status:#}"
    );
    assert_eq!(status["aws_kms"]["active_version"], 1, "{status:#}");
    assert_eq!(status["aws_kms"]["key_state"], "Enabled", "{status:#}");
    assert_eq!(
        status["aws_kms"]["service_rotation"]["enabled"], false,
        "{status:#}"
    );
    let passphrase = status["checklist"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["item"].as_str().unwrap().starts_with("MEK passphrase"))
        .unwrap();
    assert_eq!(passphrase["status"], "pass", "{passphrase:#}");

    // mek-info: each version's key ARN, state and KMS rotation.
    let info = json(&cli(d, &cfg, &["--format", "json", "security", "mek-info"]));
    assert_eq!(info["provider"], "aws-kms", "{info:#}");
    assert_eq!(info["active_version"], 1, "{info:#}");
    assert_eq!(
        info["versions"][0]["key_location"],
        v1_arn.as_str(),
        "{info:#}"
    );
    assert_eq!(info["versions"][0]["state"], "active", "{info:#}");
    assert_eq!(
        info["versions"][0]["service_rotation"]["enabled"], false,
        "{info:#}"
    );
    let t = ok(cli(d, &cfg, &["security", "mek-info"]));
    assert!(t.contains("KMS ROTATION") && t.contains("KEY"), "{t}");
    assert!(t.contains(&v1_arn), "{t}");

    // Rotation: a new KMS key for v2, every TEK re-wrapped inside KMS.
    let rotated = json(&cli(
        d,
        &cfg,
        &["--format", "json", "security", "mek", "rotate"],
    ));
    // Two table keys and the audit log's key.
    assert_eq!(rotated["keys_reencrypted"], 3, "{rotated:#}");
    assert_eq!(rotated["old_mek_id"], format!("{mek}@v1"), "{rotated:#}");
    assert_eq!(rotated["new_mek_id"], format!("{mek}@v2"), "{rotated:#}");
    let info = json(&cli(d, &cfg, &["--format", "json", "security", "mek-info"]));
    assert_eq!(info["active_version"], 2, "{info:#}");
    let v2_arn = info["versions"][1]["key_location"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(v2_arn.starts_with("arn:aws:kms:us-east-1:"), "{info:#}");
    assert_ne!(v2_arn, v1_arn, "version 2 must be another KMS key");
    assert_eq!(
        moto.alias_target(&format!("alias/{mek}/{mek}/v2")),
        v2_arn.rsplit('/').next().unwrap(),
        "the v2 alias"
    );

    let verified = json(&cli(
        d,
        &cfg,
        &["--format", "json", "security", "mek", "verify"],
    ));
    assert_eq!(verified["phase"], "verified", "{verified:#}");
    assert_eq!(verified["stranded"], 0, "{verified:#}");
    let t = ok(cli(d, &cfg, &["security", "mek", "verify"]));
    assert!(t.contains(&format!("{mek}@v1")), "{t}");

    let out = cli(
        d,
        &cfg,
        &["--format", "json", "security", "mek", "deactivate"],
    );
    let msg = json(&out);
    assert_eq!(
        msg["message"],
        format!("{mek}@v1 is deactivated; every TEK is wrapped under {mek}@v2"),
        "{msg:#}"
    );
    // Deactivation disables the old version's KMS key; the new one stays enabled.
    assert_eq!(moto.key_state(&v1_arn), "Disabled");
    assert_eq!(moto.key_state(&v2_arn), "Enabled");
    let info = json(&cli(d, &cfg, &["--format", "json", "security", "mek-info"]));
    assert_eq!(info["versions"][0]["state"], "deactivated", "{info:#}");
    assert_eq!(info["versions"][1]["state"], "active", "{info:#}");
    let t = ok(cli(d, &cfg, &["security", "mek-info"]));
    assert!(t.contains("deactivated") && t.contains(&v2_arn), "{t}");

    // Every table key still reads, now under v2 only.
    let list = json(&cli(
        d,
        &cfg,
        &["--format", "json", "security", "tek", "list"],
    ));
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list:#}");
    for k in list.as_array().unwrap() {
        assert_eq!(k["wrapped_by"]["version"], 2, "{list:#}");
    }
    let status = cli(d, &cfg, &["--format", "json", "security", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["key_availability"]["all_readable"], true,
        "{status:#}"
    );
    assert_eq!(
        status["aws_kms"]["active_key"],
        v2_arn.as_str(),
        "{status:#}"
    );
}

#[test]
fn kms_automatic_rotation_is_shown_by_status_and_mek_info() {
    let Some(moto) = moto::moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mek = unique("cli_aws_auto");
    let arn = moto.create_key("heliosdb cli test automatic rotation");
    assert_eq!(moto.boto3("enable-key-rotation", &[&arn, "180"]), "ok");
    assert_eq!(moto.boto3("rotate-key-on-demand", &[&arn]), "ok");
    let cfg = write_config(d, &moto, &moto.endpoint, &arn, &mek);
    ok(cli(d, &cfg, &["security", "tek", "create", "t"]));

    // moto's GetKeyRotationStatus leaves out RotationPeriodInDays (AWS sends it): the period is
    // shown when the service reports it.
    let info = json(&cli(d, &cfg, &["--format", "json", "security", "mek-info"]));
    let r = &info["versions"][0]["service_rotation"];
    assert_eq!(r["enabled"], true, "{info:#}");
    assert!(r["last_rotated"].is_string(), "{info:#}");
    let period = r["period_days"].as_u64();
    assert!(matches!(period, None | Some(180)), "{info:#}");
    let every = period.map_or("on its schedule".to_string(), |p| format!("every {p} days"));
    let expected = format!("KMS rotates the key material of {arn} {every} (last on ");

    let t = text(&cli(d, &cfg, &["security", "status"]));
    assert!(t.contains(&expected), "{t}");
    assert!(t.contains("); no re-wrap is needed for that"), "{t}");
    assert!(t.contains("last rotated by the provider's service"), "{t}");
    let out = cli(d, &cfg, &["--format", "json", "security", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &status["aws_kms"];
    assert_eq!(s["service_rotation"], *r, "{status:#}");
    let note = s["service_rotation_note"].as_str().unwrap();
    assert!(note.starts_with(&expected), "{note}");

    let t = ok(cli(d, &cfg, &["security", "mek-info"]));
    let cell = period.map_or("on, last ".to_string(), |p| format!("every {p} d, last "));
    assert!(t.contains(&cell), "{t}");
    assert!(t.contains(&expected), "{t}");
}

#[tokio::test]
async fn a_cut_endpoint_is_exit_code_5_and_creates_nothing() {
    let Some(moto) = moto::moto() else { return };
    let proxy = FaultProxy::start_http(moto.upstream()).await.unwrap();
    let arn = moto.create_key("heliosdb cli test cut");
    let dir = tempfile::tempdir().unwrap();
    let mek = unique("cli_aws_cut");
    let cfg = write_config(dir.path(), &moto, &proxy.url(), &arn, &mek);
    proxy.cut();
    for (args, what) in [
        (&["security", "tek", "create", "t"][..], "tek create"),
        (&["security", "status"][..], "status"),
        (
            &["--format", "json", "security", "mek-info"][..],
            "mek-info",
        ),
    ] {
        let d = dir.path().to_path_buf();
        let c = cfg.clone();
        let out = tokio::task::spawn_blocking(move || cli(&d, &c, args))
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(5), "{what}: {}", text(&out));
        assert!(text(&out).contains(&proxy.url()), "{what}: {}", text(&out));
    }
    assert!(
        !dir.path().join("keys").exists(),
        "a start that could not reach KMS created the key store"
    );

    // Restored, the same command works and the JSON failure form is gone.
    proxy.restore();
    let d = dir.path().to_path_buf();
    let c = cfg.clone();
    let out = tokio::task::spawn_blocking(move || cli(&d, &c, &["security", "tek", "create", "t"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Cut again after the first start: a command that needs KMS is exit code 5 too, in JSON
    // with the provider_unavailable kind.
    proxy.cut();
    let d = dir.path().to_path_buf();
    let c = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        cli(
            &d,
            &c,
            &["--format", "json", "security", "tek", "rotate", "t"],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .or_else(|_| serde_json::from_slice(&out.stderr))
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(v["error"]["kind"], "provider_unavailable", "{v:#}");
}
