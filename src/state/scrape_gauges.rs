//! The deployments' gauges read at scrape time (`tollgate_ratelimit_limit`,
//! `tollgate_ratelimit_remaining`, `tollgate_inflight_requests`, `tollgate_queue_depth`), written
//! straight into the exposition from the table instead of kept in the registry: at 10,000
//! deployments the registry would hold 20,000 or more series objects (~350 bytes each) between
//! scrapes only to print them, and a deleted deployment's would linger until removed. Written
//! by hand because the registry is the only writer the `prometheus` crate has; the format is
//! the text exposition's (HELP, TYPE, then one `name{labels} value` line per sample).

use std::fmt::Write;

/// One gauge family being written: its samples, then (by [`GaugeFamily::finish`]) the family.
pub struct GaugeFamily {
    name: &'static str,
    help: &'static str,
    samples: String,
}

impl GaugeFamily {
    pub fn new(name: &'static str, help: &'static str) -> GaugeFamily {
        GaugeFamily { name, help, samples: String::new() }
    }

    /// One sample: `labels` in name order.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: i64) {
        let out = &mut self.samples;
        out.push_str(self.name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push_str("=\"");
                escape(out, value);
                out.push('"');
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }

    /// Appends the family to `out` (nothing when it has no samples, as the registry does).
    pub fn finish(self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} gauge", self.name);
        out.push_str(&self.samples);
    }
}

/// A label value as the text format quotes it.
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_is_written_as_the_text_format_says() {
        let mut family = GaugeFamily::new("tollgate_x", "What x is.");
        family.sample(&[("deployment", "a\"b\\c\nd"), ("limit", "tokens")], 7);
        family.sample(&[], -1);
        let mut out = String::new();
        family.finish(&mut out);
        assert_eq!(
            out,
            "# HELP tollgate_x What x is.\n# TYPE tollgate_x gauge\ntollgate_x{deployment=\"a\\\"b\\\\c\\nd\",limit=\"tokens\"} 7\ntollgate_x -1\n"
        );
        let mut empty = String::new();
        GaugeFamily::new("tollgate_y", "Nothing.").finish(&mut empty);
        assert!(empty.is_empty());
    }
}
