#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = oodbox_fuzz::checkpoint_pickle(data);
});
