//! `module-cycles [DIR]`: lists the import circles of more than two modules
//! in every crate below DIR (default: the workspace); exits 1 if any.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    match vela_module_cycles::check_tree(&dir) {
        Ok(circles) if circles.is_empty() => ExitCode::SUCCESS,
        Ok(circles) => {
            for c in circles {
                eprint!("{c}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("module-cycles: cannot read {}: {e}", dir.display());
            ExitCode::from(2)
        }
    }
}
