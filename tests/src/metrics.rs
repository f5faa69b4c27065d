//! Parsing of the Prometheus text exposition format (the subset servers emit).

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub raw: String,
}

impl Metrics {
    /// Parses Prometheus text. Malformed lines are an error (the relay must emit valid text).
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let mut samples = Vec::new();
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", no + 1))?);
        }
        Ok(Metrics {
            samples,
            raw: text.to_string(),
        })
    }

    /// True if any sample of this metric name exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// The sum of all samples named `name` whose labels include every `(key, value)` in
    /// `labels` (other labels may be present). Absent series count as 0, which is how an
    /// untouched Prometheus counter vector looks.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The value of the one sample with exactly these labels, if present.
    pub fn get_exact(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut consumed = None;
        loop {
            // skip separators
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some(&(i, '}')) => {
                    consumed = Some(i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            match chars.next() {
                Some((_, '"')) => {}
                _ => return Err(format!("label {key:?} value not quoted")),
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => return Err("dangling escape".into()),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err("unterminated label value".into());
            }
            labels.insert(key.trim().to_string(), value);
        }
        let consumed = consumed.ok_or("unterminated label set")?;
        rest = &r[consumed..];
    }
    let value_str = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value_str {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_with_labels() {
        let text = "# HELP icegate_relay_requests_total Requests.\n\
# TYPE icegate_relay_requests_total counter\n\
icegate_relay_requests_total{method=\"allocate\",result=\"success\"} 3\n\
icegate_relay_requests_total{method=\"allocate\",result=\"401\"} 2\n\
icegate_relay_requests_total{method=\"binding\",result=\"success\"} 7 1700000000000\n\
icegate_relay_ports_in_use 4\n\
weird{a=\"x\\\"y,}\"} 1.5e3\n";
        let m = Metrics::parse(text).unwrap();
        assert_eq!(
            m.sum("icegate_relay_requests_total", &[("method", "allocate")]),
            5.0
        );
        assert_eq!(
            m.get_exact(
                "icegate_relay_requests_total",
                &[("method", "binding"), ("result", "success")]
            ),
            Some(7.0)
        );
        assert_eq!(m.sum("icegate_relay_ports_in_use", &[]), 4.0);
        assert_eq!(m.sum("missing", &[]), 0.0);
        assert_eq!(m.sum("weird", &[("a", "x\"y,}")]), 1500.0);
        assert!(m.has("icegate_relay_ports_in_use"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Metrics::parse("foo{a=b} 1\n").is_err());
        assert!(Metrics::parse("foo 1x\n").is_err());
    }
}
