//! The workspace's crates import in layers: no import circle of more than
//! two modules in any of them (ARCHITECTURE.md, "Signaling: the layers we
//! aim for"). `cargo test --workspace` runs this, so scripts/test.sh and
//! CI do; the unit tests in src/lib.rs show that a made-up circle fails.

use std::path::Path;

#[test]
fn no_crate_of_the_workspace_has_an_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let circles = vela_module_cycles::check_tree(&root).expect("the workspace is readable");
    let report: String = circles.iter().map(ToString::to_string).collect();
    assert!(
        circles.is_empty(),
        "import circles (break them by moving the shared item down a layer):\n{report}"
    );
}
