//! Logging: env_logger with key=value fields, filter from `RUST_LOG` (default `info`).
use std::io::Write;

pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".into());
    env_logger::Builder::new()
        .parse_filters(&filter)
        .format(|buf, record| {
            let ts = buf.timestamp_millis();
            write!(
                buf,
                "{ts} {:<5} {}] {}",
                record.level(),
                record.target(),
                record.args()
            )?;
            let mut v = KvWriter(buf, Ok(()));
            let _ = record.key_values().visit(&mut v);
            v.1?;
            writeln!(buf)
        })
        .init();
}

/// Writes ` key=value` pairs, quoting values that contain spaces or quotes.
struct KvWriter<'a>(&'a mut env_logger::fmt::Formatter, std::io::Result<()>);

impl<'kvs> log::kv::VisitSource<'kvs> for KvWriter<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let s = value.to_string();
        let r = if s.is_empty() || s.contains([' ', '"', '=']) {
            write!(self.0, " {key}={s:?}")
        } else {
            write!(self.0, " {key}={s}")
        };
        if let Err(e) = r {
            self.1 = Err(e);
        }
        Ok(())
    }
}
