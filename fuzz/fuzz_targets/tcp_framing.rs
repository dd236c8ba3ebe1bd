#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vela_fuzz::tcp_framing::run(data));
