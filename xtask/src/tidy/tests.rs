//! Tests of the workspace rules on hand-made crate descriptions.

use super::model::{scan_unsafe, uses_unsafe_keyword, uses_workspace_lints};
use super::*;

fn krate(name: &str, deps: &[(&str, bool)]) -> CrateInfo {
    CrateInfo {
        name: name.into(),
        dir: format!("crates/{name}"),
        publishable: !UNPUBLISHED.contains(&name),
        internal_deps: deps
            .iter()
            .map(|(n, dev)| InternalDep {
                name: n.to_string(),
                dev: *dev,
                has_version: true,
            })
            .collect(),
        missing_metadata: vec![],
        uses_workspace_lints: true,
        has_unsafe: false,
        allows_unsafe: false,
    }
}

fn arch_for(crates: &[CrateInfo]) -> String {
    crates.iter().map(|c| format!("`{}`\n", c.name)).collect()
}

fn problems(crates: Vec<CrateInfo>) -> Vec<String> {
    let arch = arch_for(&crates);
    check(&crates, &arch)
}

#[test]
fn a_clean_workspace_passes() {
    let ws = vec![
        krate("heliosdb-tde-core", &[]),
        krate("heliosdb-tde-cipher", &[("heliosdb-tde-core", false)]),
        krate(
            "heliosdb-tde-file",
            &[("heliosdb-tde-core", false), ("heliosdb-tde-cipher", false)],
        ),
        krate(
            "heliosdb-security",
            &[("heliosdb-tde-file", false), ("heliosdb-tde-vault", false)],
        ),
    ];
    assert_eq!(problems(ws), Vec::<String>::new());
}

#[test]
fn core_may_not_depend_on_our_crates() {
    let p = problems(vec![krate(
        "heliosdb-tde-core",
        &[("heliosdb-tde-cipher", false)],
    )]);
    assert!(p[0].contains("layering"), "{p:?}");
}

#[test]
fn a_backends_tests_may_use_the_manager_and_store_but_its_code_may_not() {
    let ok = problems(vec![krate(
        "heliosdb-tde-vault",
        &[
            ("heliosdb-tde-core", false),
            ("heliosdb-tde-manager", true),
            ("heliosdb-tde-keystore", true),
            ("heliosdb-tde-conformance", true),
        ],
    )]);
    assert_eq!(ok, Vec::<String>::new());
    let p = problems(vec![krate(
        "heliosdb-tde-vault",
        &[
            ("heliosdb-tde-core", false),
            ("heliosdb-tde-manager", false),
        ],
    )]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("heliosdb-tde-manager"), "{p:?}");
}

#[test]
fn a_backend_may_not_depend_on_another_backend() {
    for dev in [false, true] {
        let p = problems(vec![krate(
            "heliosdb-tde-vault",
            &[("heliosdb-tde-core", false), ("heliosdb-tde-memory", dev)],
        )]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("heliosdb-tde-memory"), "{p:?}");
    }
}

#[test]
fn rotation_depends_only_on_core() {
    let p = problems(vec![krate(
        "heliosdb-tde-rotation",
        &[
            ("heliosdb-tde-core", false),
            ("heliosdb-tde-keystore", false),
        ],
    )]);
    assert_eq!(p.len(), 1, "{p:?}");
}

#[test]
fn only_the_facade_and_cli_know_backends() {
    let p = problems(vec![krate(
        "heliosdb-tde-manager",
        &[("heliosdb-tde-file", false)],
    )]);
    assert_eq!(p.len(), 1, "{p:?}");
    let ok = problems(vec![krate(
        "heliosdb-cli",
        &[("heliosdb-tde-pkcs11", false)],
    )]);
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn unknown_crates_and_wrong_directories_are_reported() {
    let p = problems(vec![krate("heliosdb-tde-gcp", &[])]);
    assert!(p[0].contains("not on the crate map"), "{p:?}");
    let mut c = krate("heliosdb-tde-core", &[]);
    c.dir = "crates/core".into();
    let p = problems(vec![c]);
    assert!(
        p[0].contains("must live in crates/heliosdb-tde-core"),
        "{p:?}"
    );
}

#[test]
fn release_metadata_is_required() {
    let mut c = krate("heliosdb-tde-core", &[]);
    c.missing_metadata = vec!["rust-version"];
    let p = problems(vec![c]);
    assert!(p[0].contains("rust-version"), "{p:?}");
    let mut c = krate("heliosdb-tde-cipher", &[("heliosdb-tde-core", false)]);
    c.internal_deps[0].has_version = false;
    let p = problems(vec![c]);
    assert!(p[0].contains("needs a version"), "{p:?}");
    let mut c = krate("heliosdb-tde-conformance", &[]);
    c.publishable = true;
    let p = problems(vec![c]);
    assert!(p[0].contains("must not be publishable"), "{p:?}");
}

#[test]
fn unsafe_needs_a_documented_reason() {
    let mut c = krate("heliosdb-tde-core", &[]);
    c.has_unsafe = true;
    let p = problems(vec![c.clone()]);
    assert!(p[0].contains("unsafe"), "{p:?}");
    let arch = format!(
        "{}\n## Unsafe code\n- heliosdb-tde-core: mlock\n## Next\n",
        arch_for(std::slice::from_ref(&c))
    );
    assert!(check(&[c], &arch).is_empty());
}

#[test]
fn unsafe_scanner_ignores_strings_and_comments() {
    let dir = std::env::temp_dir().join(format!("tidy-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("lib.rs"), "let s = \"unsafe {\"; // unsafe fn\n").unwrap();
    assert_eq!(scan_unsafe(&dir), (false, false));
    std::fs::write(
        dir.join("lib.rs"),
        "#![allow(unsafe_code)]\nfn f() { unsafe { g() } }\n",
    )
    .unwrap();
    assert_eq!(scan_unsafe(&dir), (true, true));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!uses_unsafe_keyword("if c.allows_unsafe {"));
    assert!(uses_unsafe_keyword("pub unsafe fn f()"));
    assert!(uses_unsafe_keyword("unsafe impl Send for X {}"));
}

#[test]
fn backend_crates_stay_out_of_lean_trees() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(
        check_tree(
            "heliosdb-security",
            &names(&["aws-lc-rs", "aws-lc-sys", "redb"])
        )
        .is_empty()
    );
    let p = check_tree("heliosdb-security", &names(&["aws-sdk-kms", "redb"]));
    assert_eq!(p.len(), 1, "{p:?}");
    let p = check_tree("heliosdb-tde-file", &names(&["cryptoki", "azure_core"]));
    assert_eq!(p.len(), 2, "{p:?}");
    // The CLI may pull every backend.
    assert!(check_tree("heliosdb-cli", &names(&["aws-sdk-kms", "cryptoki"])).is_empty());
    let p = check_tree(
        "heliosdb-tde-vault",
        &names(&[
            "heliosdb-tde-vault",
            "heliosdb-tde-core",
            "heliosdb-tde-memory",
        ]),
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("heliosdb-tde-memory"), "{p:?}");
}

#[test]
fn one_http_stack() {
    let tree = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    assert!(
        check_http_stack(
            "heliosdb-tde-aws-kms",
            &tree(&[
                ("hyper", "1.8.1"),
                ("rustls", "0.23.35"),
                ("aws-lc-rs", "1.19.0")
            ])
        )
        .is_empty()
    );
    let p = check_http_stack(
        "heliosdb-tde-aws-kms",
        &tree(&[
            ("hyper", "0.14.32"),
            ("rustls", "0.21.12"),
            ("hyper", "1.8.1"),
        ]),
    );
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("hyper v0.14.32"), "{p:?}");
    assert!(p[1].contains("rustls v0.21.12"), "{p:?}");
    // A version prefix, not a substring: 0.140 is not 0.14.
    assert!(check_http_stack("x", &tree(&[("hyper", "0.140.0")])).is_empty());
}

#[test]
fn lints_and_code_map_are_required() {
    let mut c = krate("heliosdb-tde-core", &[]);
    c.uses_workspace_lints = false;
    let p = check(&[c], "");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(uses_workspace_lints("[lints]\nworkspace = true\n"));
    assert!(!uses_workspace_lints("[lints.rust]\nworkspace = true\n"));
}
