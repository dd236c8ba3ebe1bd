//! Every target in one program: `VELA_FUZZ_TARGET=<target>` picks one.
#![no_main]

use std::sync::OnceLock;

static TARGET: OnceLock<vela_fuzz::Target> = OnceLock::new();

libfuzzer_sys::fuzz_target!(
    init: {
        let name = std::env::var("VELA_FUZZ_TARGET").unwrap_or_default();
        match vela_fuzz::Target::from_name(&name) {
            Some(t) => {
                let _ = TARGET.set(t);
            }
            None => {
                eprintln!(
                    "VELA_FUZZ_TARGET={name:?}: expected one of {}",
                    vela_fuzz::Target::NAMES.join(", ")
                );
                std::process::exit(2);
            }
        }
    },
    |data: &[u8]| {
        if let Some(t) = TARGET.get() {
            t.run(data);
        }
    }
);
