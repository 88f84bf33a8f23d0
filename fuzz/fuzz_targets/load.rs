//! Any bytes through the whole loader (YAML, schema, typed parse, analysis), the
//! diagnostics renderers, and, for a valid pipeline whose parameters all have defaults,
//! the plan. A panic, a timeout or running out of memory is a bug.

#![no_main]

use dwflow::diagnostic;
use dwflow::pipeline::load::load_bytes;
use dwflow::plan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let loaded = load_bytes("fuzz.yaml", data);
    let mut out = String::new();
    diagnostic::render_human(&loaded.report, &mut out);
    diagnostic::render_github(&loaded.report, &mut out);
    let _ = diagnostic::json_list(std::slice::from_ref(&loaded.report));
    let Some(checked) = &loaded.checked else {
        return;
    };
    if checked
        .pipeline
        .params
        .values()
        .any(|p| p.default.is_none())
    {
        return;
    }
    if let Ok(params) = plan::resolve_params(&checked.pipeline, &[]) {
        let _ = plan::plan(checked, &params);
    }
});
