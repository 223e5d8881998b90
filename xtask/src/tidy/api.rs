//! The release rules about public types (RELEASING.md, "Versioning"), checked by parsing each
//! publishable library with `syn`:
//!
//! * every public enum is `#[non_exhaustive]`, so that adding a variant is not breaking,
//!   unless it is a closed set listed in [`EXHAUSTIVE_ENUMS`];
//! * every public struct whose fields are all public is `#[non_exhaustive]`, so that adding a
//!   field is not breaking, unless it is listed in [`LITERAL_STRUCTS`] (types that users, or
//!   the providers and stores they write, build with struct literals).
//!
//! "Public" means declared `pub` in a module of the library (`src/lib.rs` and the modules it
//! declares, without `#[cfg(test)]` modules): the workspace lints `unreachable_pub` (an error
//! under `clippy -D warnings`), so a `pub` item is part of the API.

use crate::Result;
use std::path::{Path, PathBuf};
use syn::{Attribute, Fields, Item, Visibility};

/// A public type allowed to break the rule, and why.
#[derive(Clone, Copy, Debug)]
pub struct Exemption {
    /// The crate.
    pub krate: &'static str,
    /// The type's name.
    pub name: &'static str,
    /// Why it is exempt (also in RELEASING.md).
    pub reason: &'static str,
}

const CLOSED_SET: &str = "a closed set: the variants are all the values there can be";

/// Public enums that are closed sets and stay exhaustive, so that callers match them fully.
pub const EXHAUSTIVE_ENUMS: &[Exemption] = &[Exemption {
    krate: "heliosdb-tde-core",
    name: "SecurityMode",
    reason: CLOSED_SET,
}];

const GUIDE_LITERAL: &str = "the user's guide builds it with a struct literal \
    (`..Default::default()` fills new fields), and a new field keeps a default";
const PROVIDER_BUILT: &str = "MekProvider / KeyStore implementations outside this workspace \
    build it with a struct literal to answer the trait";
const NEWTYPE: &str = "a newtype whose one public field is its representation";
const FORMAT: &str = "its fields are a documented wire or on-disk format (docs/formats/): a \
    new field is a new format version, a breaking change whatever the attribute";
const IDENTIFIER: &str = "the parts of an identifier whose syntax is fixed (`name@vN`)";
const CALLER_BUILT: &str = "an argument that callers and KeyStore / MekProvider \
    implementations outside this workspace build with a struct literal";

/// Public structs with all-public fields that stay constructible with a struct literal.
pub const LITERAL_STRUCTS: &[Exemption] = &[
    // The configuration types applications write out field by field (struct literals ending in
    // `..Default::default()`, and TOML files).
    Exemption {
        krate: "heliosdb-security",
        name: "TdeConfig",
        reason: GUIDE_LITERAL,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "SecureFileConfig",
        reason: GUIDE_LITERAL,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "KdfParams",
        reason: GUIDE_LITERAL,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "HsmConfig",
        reason: GUIDE_LITERAL,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "AwsKmsConfig",
        reason: GUIDE_LITERAL,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "AzureKeyVaultConfig",
        reason: GUIDE_LITERAL,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "VaultTransitConfig",
        reason: GUIDE_LITERAL,
    },
    // What the provider and store traits return: a provider in another crate must build it.
    Exemption {
        krate: "heliosdb-tde-core",
        name: "MekInfo",
        reason: PROVIDER_BUILT,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "MekVersionInfo",
        reason: PROVIDER_BUILT,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "ProviderHealth",
        reason: PROVIDER_BUILT,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "TekRecord",
        reason: PROVIDER_BUILT,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "KeyMetadata",
        reason: PROVIDER_BUILT,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "UsageCounters",
        reason: PROVIDER_BUILT,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "WrapContext",
        reason: CALLER_BUILT,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "StoreBatch",
        reason: CALLER_BUILT,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "Timestamp",
        reason: NEWTYPE,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "MekRef",
        reason: IDENTIFIER,
    },
    Exemption {
        krate: "heliosdb-tde-core",
        name: "TekId",
        reason: IDENTIFIER,
    },
    // Formats.
    Exemption {
        krate: "heliosdb-tde-core",
        name: "WrappedTek",
        reason: FORMAT,
    },
    Exemption {
        krate: "heliosdb-tde-cipher",
        name: "PageHeader",
        reason: FORMAT,
    },
    Exemption {
        krate: "heliosdb-tde-cipher",
        name: "SealedParts",
        reason: FORMAT,
    },
    Exemption {
        krate: "heliosdb-tde-file",
        name: "Header",
        reason: FORMAT,
    },
    Exemption {
        krate: "heliosdb-tde-file",
        name: "MekFile",
        reason: FORMAT,
    },
];

/// What the rules need to know about one public type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicType {
    /// The crate that declares it.
    pub krate: String,
    /// The file, for messages.
    pub file: String,
    /// The type's name.
    pub name: String,
    /// Whether it is an enum (else a struct).
    pub is_enum: bool,
    /// Whether it carries `#[non_exhaustive]`.
    pub non_exhaustive: bool,
    /// For a struct: whether it has fields and all of them are `pub`.
    pub all_fields_public: bool,
}

/// The public enums and structs of the library of `krate` in `crate_dir` (none for a crate
/// without `src/lib.rs`).
pub fn scan_crate(krate: &str, crate_dir: &Path) -> Result<Vec<PublicType>> {
    let lib = crate_dir.join("src").join("lib.rs");
    let mut out = Vec::new();
    if lib.is_file() {
        scan_file(krate, crate_dir, &lib, &crate_dir.join("src"), &mut out)?;
    }
    Ok(out)
}

/// Scans `file`, whose out-of-line child modules live in `mod_dir`.
fn scan_file(
    krate: &str,
    crate_dir: &Path,
    file: &Path,
    mod_dir: &Path,
    out: &mut Vec<PublicType>,
) -> Result {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let parsed = syn::parse_file(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let label = file
        .strip_prefix(crate_dir)
        .unwrap_or(file)
        .display()
        .to_string();
    let ctx = Ctx {
        krate,
        crate_dir,
        file,
        label: &label,
    };
    scan_items(&ctx, &parsed.items, mod_dir, out)
}

struct Ctx<'a> {
    krate: &'a str,
    crate_dir: &'a Path,
    file: &'a Path,
    label: &'a str,
}

fn scan_items(ctx: &Ctx<'_>, items: &[Item], mod_dir: &Path, out: &mut Vec<PublicType>) -> Result {
    for item in items {
        match item {
            Item::Enum(e) if is_pub(&e.vis) => out.push(PublicType {
                krate: ctx.krate.into(),
                file: ctx.label.into(),
                name: e.ident.to_string(),
                is_enum: true,
                non_exhaustive: has_non_exhaustive(&e.attrs),
                all_fields_public: false,
            }),
            Item::Struct(s) if is_pub(&s.vis) => {
                let fields: Vec<&syn::Field> = match &s.fields {
                    Fields::Named(f) => f.named.iter().collect(),
                    Fields::Unnamed(f) => f.unnamed.iter().collect(),
                    Fields::Unit => Vec::new(),
                };
                out.push(PublicType {
                    krate: ctx.krate.into(),
                    file: ctx.label.into(),
                    name: s.ident.to_string(),
                    is_enum: false,
                    non_exhaustive: has_non_exhaustive(&s.attrs),
                    all_fields_public: !fields.is_empty() && fields.iter().all(|f| is_pub(&f.vis)),
                });
            }
            Item::Mod(m) if !is_cfg_test(&m.attrs) => {
                let child_dir = mod_dir.join(m.ident.to_string());
                if let Some((_, inline)) = &m.content {
                    scan_items(ctx, inline, &child_dir, out)?;
                } else {
                    let file = module_file(ctx.file, mod_dir, &m.ident.to_string(), &m.attrs)
                        .ok_or_else(|| {
                            format!("{}: cannot find the file of module {}", ctx.label, m.ident)
                        })?;
                    scan_file(ctx.krate, ctx.crate_dir, &file, &child_dir, out)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The file of `mod name;` declared in `parent` (child modules in `mod_dir`).
fn module_file(parent: &Path, mod_dir: &Path, name: &str, attrs: &[Attribute]) -> Option<PathBuf> {
    for a in attrs {
        if a.path().is_ident("path")
            && let syn::Meta::NameValue(nv) = &a.meta
            && let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
        {
            return Some(parent.parent()?.join(s.value()));
        }
    }
    [
        mod_dir.join(format!("{name}.rs")),
        mod_dir.join(name).join("mod.rs"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn is_pub(vis: &Visibility) -> bool {
    matches!(vis, Visibility::Public(_))
}

fn has_non_exhaustive(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("non_exhaustive"))
}

fn is_cfg_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

fn exempt(list: &[Exemption], t: &PublicType) -> bool {
    list.iter().any(|e| e.krate == t.krate && e.name == t.name)
}

/// One line per public type that breaks a rule.
pub fn check(types: &[PublicType]) -> Vec<String> {
    let mut problems = Vec::new();
    for t in types.iter().filter(|t| !t.non_exhaustive) {
        if t.is_enum && !exempt(EXHAUSTIVE_ENUMS, t) {
            problems.push(format!(
                "{}: public enum {} ({}) must be #[non_exhaustive] (RELEASING.md), or be a \
                 closed set listed in tidy::api::EXHAUSTIVE_ENUMS with the reason",
                t.krate, t.name, t.file
            ));
        } else if !t.is_enum && t.all_fields_public && !exempt(LITERAL_STRUCTS, t) {
            problems.push(format!(
                "{}: public struct {} ({}) has only public fields and must be \
                 #[non_exhaustive] with a constructor or builder (RELEASING.md), or be listed \
                 in tidy::api::LITERAL_STRUCTS with the reason",
                t.krate, t.name, t.file
            ));
        }
    }
    // An exemption for a type that no longer needs one is stale.
    for e in EXHAUSTIVE_ENUMS.iter().chain(LITERAL_STRUCTS) {
        let needed = types
            .iter()
            .any(|t| t.krate == e.krate && t.name == e.name && !t.non_exhaustive);
        let crate_scanned = types.iter().any(|t| t.krate == e.krate);
        if crate_scanned && !needed {
            problems.push(format!(
                "{}: {} is exempted in tidy::api but is not an exhaustive public type (any \
                 more); remove the exemption",
                e.krate, e.name
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(src: &str) -> Vec<PublicType> {
        let dir =
            std::env::temp_dir().join(format!("tidy-api-{}-{}", std::process::id(), src.len()));
        std::fs::create_dir_all(dir.join("src/inner")).unwrap();
        std::fs::write(dir.join("src/lib.rs"), src).unwrap();
        std::fs::write(dir.join("src/inner.rs"), "pub enum Deep { A }\nmod more;\n").unwrap();
        std::fs::write(
            dir.join("src/inner/more.rs"),
            "pub struct Deeper { pub x: u8 }\n",
        )
        .unwrap();
        let out = scan_crate("heliosdb-tde-x", &dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    #[test]
    fn enums_must_be_non_exhaustive() {
        let types = scan(
            "#[non_exhaustive]\npub enum Good { A }\npub enum Bad { A, B }\n\
             pub(crate) enum Private { A }\nmod inner;\n\
             #[cfg(test)]\nmod tests { pub enum InTests { A } }\n",
        );
        let names: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["Good", "Bad", "Deep", "Deeper"]);
        let p = check(&types);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].contains("enum Bad") && p[1].contains("enum Deep"),
            "{p:?}"
        );
        assert!(p[2].contains("struct Deeper"), "{p:?}");
    }

    #[test]
    fn structs_with_only_public_fields_must_be_non_exhaustive() {
        let types = scan(
            "pub struct Open { pub a: u8, pub b: u8 }\n\
             pub struct Sealed { pub a: u8, b: u8 }\n\
             #[non_exhaustive]\npub struct Marked { pub a: u8 }\n\
             pub struct Unit;\npub struct Tuple(pub u8);\npub struct Hidden(u8);\n",
        );
        let p = check(&types);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("struct Open") && p[1].contains("struct Tuple"),
            "{p:?}"
        );
    }

    #[test]
    fn exemptions_apply_and_go_stale() {
        let t = |name: &str, is_enum, non_exhaustive| PublicType {
            krate: "heliosdb-tde-core".into(),
            file: "src/x.rs".into(),
            name: name.into(),
            is_enum,
            non_exhaustive,
            all_fields_public: !is_enum,
        };
        let mut types: Vec<PublicType> = LITERAL_STRUCTS
            .iter()
            .filter(|e| e.krate == "heliosdb-tde-core")
            .map(|e| t(e.name, false, false))
            .collect();
        types.push(t("SecurityMode", true, false));
        assert!(check(&types).is_empty(), "{:?}", check(&types));
        types.push(t("KeyState", true, false));
        assert_eq!(check(&types).len(), 1);
        types.pop();
        types.last_mut().unwrap().non_exhaustive = true;
        let p = check(&types);
        assert!(
            p.len() == 1 && p[0].contains("remove the exemption"),
            "{p:?}"
        );
    }

    #[test]
    fn every_exemption_is_documented_in_releasing_md() {
        let releasing =
            std::fs::read_to_string(crate::workspace_root().join("RELEASING.md")).unwrap();
        for e in EXHAUSTIVE_ENUMS.iter().chain(LITERAL_STRUCTS) {
            assert!(
                releasing.contains(&format!("`{}`", e.name)),
                "RELEASING.md does not list the exemption of {}",
                e.name
            );
        }
    }
}
