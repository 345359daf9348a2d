//! The import rule between the crate's top-level modules (ARCHITECTURE.md, "Layers"): a
//! module may use only modules of a lower layer, so no two modules import each other.
//! Reads `src/` and fails naming every import that breaks the rule.

use std::collections::BTreeMap;
use std::path::Path;

/// Layer of every top-level module; a module may import only lower layers.
const LAYERS: &[(&str, u32)] = &[
    // Leaves: import nothing from the crate.
    ("rate", 0),
    ("units", 0),
    ("ids", 0),
    ("json", 0),
    ("retry", 0),
    ("tls", 0),
    // The PeerJS peer, then the discovery record (which names ICE servers).
    ("peer", 1),
    ("discovery", 2),
    // Protocol cores and their shells.
    ("signaling", 3),
    ("relay", 3),
    ("tunnel", 3),
    // The handoff (on the relay) and the client (of the relay).
    ("handoff", 4),
    ("client", 4),
    // The replicated relay log (the ring secret's key derivation from discovery).
    ("replica", 4),
    // The lifecycle (uses handoff's configs and secret).
    ("lifecycle", 5),
    // Cloud parts: GitHub's launcher and publisher.
    ("github", 6),
    // Composition: the node wires everything.
    ("node", 7),
];

/// Items of the crate root every module may use (not modules).
const ROOT_ITEMS: &[&str] = &["install_crypto_provider", "shutdown_signal"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level modules named after `crate::` in `text` (`crate::a::…`, `crate::{a, b::…}`).
fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        // Skip `$crate::` in macros.
        if text[..i].ends_with('$') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(group[..end].split(',').map(ident).filter(|s| !s.is_empty()));
        } else {
            out.push(ident(rest));
        }
    }
    out
}

#[test]
fn modules_import_only_lower_layers() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if ["lib", "main"].contains(&name.as_str()) {
            continue;
        }
        let Some(&own) = layers.get(name.as_str()) else {
            broken.push(format!(
                "module `{name}` has no layer: add it to LAYERS in tests/layers.rs and ARCHITECTURE.md"
            ));
            continue;
        };
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path.clone());
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for used in imports(&text) {
                if used == name || ROOT_ITEMS.contains(&used.as_str()) {
                    continue;
                }
                match layers.get(used.as_str()) {
                    Some(&l) if l < own => {}
                    Some(&l) => broken.push(format!(
                        "{}: `{name}` (layer {own}) uses `{used}` (layer {l})",
                        f.strip_prefix(&src).unwrap().display()
                    )),
                    None => broken.push(format!(
                        "{}: `{name}` uses `crate::{used}`, which is not a module with a layer",
                        f.strip_prefix(&src).unwrap().display()
                    )),
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "import rule broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_rule_sees_both_import_forms() {
    let got = imports("use crate::relay::X; use crate::{peer::Y, rate};\n$crate::z");
    assert_eq!(got, ["relay", "peer", "rate"]);
}
