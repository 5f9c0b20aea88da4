//! What the components logged around a failure no fault explains, from the logs the harness
//! keeps when `WEFT_TEST_LOGS` names a directory (`cargo xtask soak` and `cargo xtask test` set
//! it): every line stamped from the moment the request began until it had surely timed out,
//! but for the proxies' lines about other requests that were echoed whole, so the report itself
//! says where the request was lost. The failed request's own lines are kept however it ended:
//! the client's node proxy names it by the address it came from (`client=`), and the
//! `traceparent` of that line finds the other node proxy's (not a waypoint's: it starts a trace
//! of its own).
use std::path::Path;

/// How much of the logs one failure shows, at most.
const LINES: usize = 60;

/// The lines of every log in `dir` stamped from `at_ms - 100 ms` until the request's longest
/// time and a second more had passed (the steady
/// traffic's and the logs' clocks are one clock, read a moment apart), in time order, each led
/// by its file's name; a proxy's line about a connection closed after carrying as many bytes
/// each way (an echo answered in full) is left out, unless it is about the failed request:
/// the one that names `client` (the address the request came from, when it connected) or
/// carries that line's `traceparent`. The request's own lines are kept whatever the cap on the
/// others.
pub fn around(dir: &Path, at_ms: u128, client: Option<&str>) -> Vec<String> {
    let (from, to) = (at_ms.saturating_sub(100), at_ms + super::trend::BEFORE.as_millis() + 1000);
    let mut stamped: Vec<(u128, String)> = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().trim_end_matches(".log").to_owned();
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        for line in text.lines() {
            if let Some(at) = stamp_ms(line).filter(|at| (from..=to).contains(at)) {
                stamped.push((at, format!("[{name}] {line}")));
            }
        }
    }
    let named = |line: &str| client.is_some_and(|client| field(line, "client=") == Some(client));
    let traces: Vec<String> = stamped
        .iter()
        .filter(|(_, line)| named(line))
        .filter_map(|(_, line)| field(line, "trace=").map(str::to_owned))
        .collect();
    let ours = |line: &str| {
        named(line) || field(line, "trace=").is_some_and(|trace| traces.iter().any(|t| t == trace))
    };
    stamped.sort();
    let (mut kept, mut skipped) = (0, 0);
    let mut lines = Vec::new();
    for (_, line) in stamped {
        let own = ours(&line);
        if !own && echoed_whole(&line) {
            continue;
        }
        if !own && kept >= LINES {
            skipped += 1;
            continue;
        }
        kept += usize::from(!own);
        lines.push(line);
    }
    if skipped > 0 {
        lines.push(format!("… and {skipped} more lines"));
    }
    lines
}

/// Whether `line` is a proxy's record of a connection closed with `sent=N received=N`, N > 0
/// (`sent=0 received=0` is a request cut before its first byte: evidence, not noise).
fn echoed_whole(line: &str) -> bool {
    let count = |key: &str| line.split_whitespace().find_map(|word| word.strip_prefix(key));
    line.contains(" closed ")
        && count("sent=").is_some_and(|sent| sent != "0")
        && count("sent=") == count("received=")
}

/// The value of the first `key` (`name=`) in `line`, unquoted.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let value = line.split_whitespace().find_map(|word| word.strip_prefix(key))?;
    Some(value.trim_matches('"'))
}

/// The time a log line starts with, `2026-12-04T02:41:12.760121Z` (tracing's, in UTC), in
/// milliseconds since the Unix epoch.
fn stamp_ms(line: &str) -> Option<u128> {
    let stamp = line.get(..27)?.strip_suffix('Z')?;
    let number = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, micros) = (number(11..13)?, number(14..16)?, number(17..19)?, number(20..26)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let shifted = if month <= 2 { year - 1 } else { year };
    let era = shifted.div_euclid(400);
    let year_of_era = shifted - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let ms = ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + micros / 1000;
    u128::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::{around, stamp_ms};

    #[test]
    fn a_log_lines_stamp_is_read_as_unix_time() {
        // `date -u -d 2026-12-04T02:41:12.760121Z +%s%3N`
        assert_eq!(
            stamp_ms("2026-12-04T02:41:12.760121Z  INFO weft_ztunnel: starting"),
            Some(1_796_352_072_760)
        );
        assert_eq!(stamp_ms("2024-02-29T00:00:00.000000Z x"), Some(1_709_164_800_000));
        assert_eq!(stamp_ms("ready"), None);
        assert_eq!(stamp_ms("thread 'main' panicked at src/main.rs:1:1: a long enough line"), None);
    }

    #[test]
    fn the_lines_around_a_failure_come_from_every_log_in_time_order_without_whole_echoes() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, lines: &[&str]| std::fs::write(dir.path().join(name), lines.join("\n")).unwrap();
        write(
            "weft-ztunnel.n0.log",
            &[
                "2024-02-29T00:00:01.000000Z a",
                "2024-02-29T00:00:02.000000Z INFO inbound HBONE closed sent=32 received=32",
                "2024-02-29T00:00:13.000000Z late",
            ],
        );
        write(
            "weft-ztunnel.n1.log",
            &[
                "2024-02-29T00:00:00.950000Z b",
                "2024-02-29T00:00:00.500000Z early",
                "no stamp",
                "2024-02-29T00:00:06.000000Z INFO inbound HBONE closed sent=32 received=0",
                "2024-02-29T00:00:07.000000Z INFO outbound closed sent=0 received=0",
            ],
        );
        let lines = around(dir.path(), 1_709_164_801_000, None);
        assert_eq!(
            lines,
            [
                "[weft-ztunnel.n1] 2024-02-29T00:00:00.950000Z b",
                "[weft-ztunnel.n0] 2024-02-29T00:00:01.000000Z a",
                "[weft-ztunnel.n1] 2024-02-29T00:00:06.000000Z INFO inbound HBONE closed sent=32 received=0",
                "[weft-ztunnel.n1] 2024-02-29T00:00:07.000000Z INFO outbound closed sent=0 received=0",
            ]
        );
    }

    #[test]
    fn the_failed_requests_own_lines_are_kept_though_it_was_echoed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, lines: &[&str]| std::fs::write(dir.path().join(name), lines.join("\n")).unwrap();
        write(
            "weft-ztunnel.n0.log",
            &[
                "2024-02-29T00:00:02.000000Z INFO outbound via HBONE closed client=10.0.0.1:40000 sent=8 received=8 trace=00-aa-01",
                "2024-02-29T00:00:02.100000Z INFO outbound via HBONE closed client=10.0.0.1:40002 sent=8 received=8 trace=00-bb-01",
            ],
        );
        write(
            "weft-ztunnel.n1.log",
            &[
                "2024-02-29T00:00:01.900000Z INFO inbound HBONE closed sent=8 received=8 connect_ms=6004 trace=\"00-aa-01\"",
                "2024-02-29T00:00:02.050000Z INFO inbound HBONE closed sent=8 received=8 trace=\"00-bb-01\"",
            ],
        );
        let lines = around(dir.path(), 1_709_164_801_000, Some("10.0.0.1:40000"));
        assert_eq!(
            lines,
            [
                "[weft-ztunnel.n1] 2024-02-29T00:00:01.900000Z INFO inbound HBONE closed sent=8 received=8 connect_ms=6004 trace=\"00-aa-01\"",
                "[weft-ztunnel.n0] 2024-02-29T00:00:02.000000Z INFO outbound via HBONE closed client=10.0.0.1:40000 sent=8 received=8 trace=00-aa-01",
            ]
        );
    }

    #[test]
    fn the_failed_requests_own_lines_are_kept_past_the_cap_on_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines: Vec<String> =
            (0..super::LINES + 5).map(|n| format!("2024-02-29T00:00:01.{n:06}Z INFO other {n}")).collect();
        lines.push("2024-02-29T00:00:09.000000Z INFO outbound via HBONE closed client=10.0.0.1:40000 sent=8 received=8".into());
        std::fs::write(dir.path().join("weft-ztunnel.n0.log"), lines.join("\n")).unwrap();
        let found = around(dir.path(), 1_709_164_801_000, Some("10.0.0.1:40000"));
        assert_eq!(found.len(), super::LINES + 2, "{found:#?}");
        assert!(found[super::LINES].contains("client=10.0.0.1:40000"), "{found:#?}");
        assert_eq!(found[super::LINES + 1], "… and 5 more lines");
    }
}
