//! What a scenario hands back: a JSON object, a human summary, and the problems it found.

use serde_json::Value;

/// The result of one scenario run.
#[derive(Debug)]
pub struct Outcome {
    /// The machine-readable result (`--json`).
    pub json: Value,
    /// The human summary.
    pub human: String,
    /// Loss, leaks, disconnects… each makes the exit status 3.
    pub problems: Vec<String>,
}

impl Outcome {
    /// Builds an outcome; adds `"ok"` and `"problems"` to the JSON object.
    pub fn new(mut json: Value, human: String, problems: Vec<String>) -> Self {
        if let Some(obj) = json.as_object_mut() {
            obj.insert("ok".into(), Value::from(problems.is_empty()));
            obj.insert("problems".into(), Value::from(problems.clone()));
        }
        Outcome {
            json,
            human,
            problems,
        }
    }
}

/// Formats a rate with thousands separators.
pub fn per_sec(n: f64) -> String {
    let digits = (n.round() as u64).to_string();
    let first = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = String::from(&digits[..first]);
    for chunk in digits.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::per_sec(1234567.4), "1,234,567");
        assert_eq!(super::per_sec(12.0), "12");
    }
}
