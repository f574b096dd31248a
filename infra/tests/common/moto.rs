//! moto_server's request recorder (`/moto-api/recorder/*`): what moto
//! received while a command ran, and which of those requests changed
//! something. (Each test binary that includes it uses part of it.)
#![allow(dead_code)]

/// One recording at a time in a test binary: moto has one recorder.
static RECORDER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What moto at `base` received while `f` ran (the recorder is reset first;
/// requests of other tests running meanwhile are in it too, so callers
/// filter by their own names).
pub fn recorded(base: &str, f: impl FnOnce()) -> Vec<serde_json::Value> {
    let _one = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
    let post = |path: &str| {
        ureq::post(&format!("{base}/moto-api/recorder/{path}"))
            .send_empty()
            .unwrap();
    };
    post("reset-recording");
    post("start-recording");
    f();
    let text = ureq::get(&format!("{base}/moto-api/recorder/download-recording"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    post("stop-recording");
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The operation of a recorded request: `Action=` of the query protocols
/// (IAM, STS), the `X-Amz-Target` of the JSON ones (Secrets Manager), else
/// the method and path (REST: Lambda).
pub fn operation(request: &serde_json::Value) -> String {
    let body = request["body"].as_str().unwrap_or_default();
    if let Some(action) = body
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
    {
        return action.to_string();
    }
    let target = request["headers"].as_object().and_then(|headers| {
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("x-amz-target"))
            .and_then(|(_, value)| value.as_str())
    });
    if let Some(target) = target {
        return target.rsplit('.').next().unwrap_or(target).to_string();
    }
    format!(
        "{} {}",
        request["method"].as_str().unwrap_or_default(),
        request["url"].as_str().unwrap_or_default()
    )
}

/// Whether a recorded request changes something: anything but a read
/// (`Get*`, `List*`, `Describe*`, a REST `GET`/`HEAD`).
pub fn is_write(request: &serde_json::Value) -> bool {
    let operation = operation(request);
    let reads = ["Get", "List", "Describe", "GET ", "HEAD "];
    !reads.iter().any(|read| operation.starts_with(read))
}
