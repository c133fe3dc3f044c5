//! Image references: parsing and normalising them (behaviours.md §8.1).
/// Normalises an image reference (behaviours.md §8.1): `:latest` is added when there is
/// neither tag nor digest; with a digest the tag is dropped. An engine image id
/// (`sha256:<64 hex>`) is kept as is. Errors say why the reference does not parse.
pub fn normalise_image(reference: &str) -> Result<String, String> {
    let r = reference;
    if r.is_empty() {
        return Err("empty image reference".to_string());
    }
    if r.len() > 255 {
        return Err("image reference longer than 255 characters".to_string());
    }
    if let Some(hex) = r.strip_prefix("sha256:") {
        if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Ok(r.to_string());
        }
    }
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        check_digest(d).map_err(|m| format!("{r:?}: {m}"))?;
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(format!("{r:?}: invalid tag {t:?}"));
        }
    }
    check_repository(name).map_err(|m| format!("{r:?}: {m}"))?;
    Ok(match (digest, tag) {
        (Some(d), _) => format!("{name}@{d}"),
        (None, Some(t)) => format!("{name}:{t}"),
        (None, None) => format!("{name}:latest"),
    })
}

fn check_digest(d: &str) -> Result<(), String> {
    let (algo, hex) = d
        .split_once(':')
        .ok_or_else(|| format!("invalid digest {d:?}"))?;
    let algo_ok = !algo.is_empty()
        && algo.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
        });
    let hex_ok = if algo == "sha256" {
        hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    } else {
        hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
    };
    if algo_ok && hex_ok {
        Ok(())
    } else {
        Err(format!("invalid digest {d:?}"))
    }
}

fn check_repository(name: &str) -> Result<(), String> {
    let comps: Vec<&str> = name.split('/').collect();
    let first = comps[0];
    let has_domain =
        comps.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost");
    let path = if has_domain {
        check_domain(first)?;
        &comps[1..]
    } else {
        &comps[..]
    };
    for c in path {
        // [a-z0-9]+ separated by '.', '_', '__' or any run of '-'.
        let valid = !c.is_empty()
            && c.starts_with(|x: char| x.is_ascii_lowercase() || x.is_ascii_digit())
            && c.ends_with(|x: char| x.is_ascii_lowercase() || x.is_ascii_digit())
            && c.chars().all(|x| {
                x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, '.' | '_' | '-')
            })
            && !c.contains("..")
            && !c.contains("___")
            && !c.contains("._")
            && !c.contains("_.")
            && !c.contains(".-")
            && !c.contains("-.")
            && !c.contains("_-")
            && !c.contains("-_");
        if !valid {
            return Err(format!(
                "invalid repository path component {c:?} (lowercase letters, digits and separators)"
            ));
        }
    }
    Ok(())
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = if let Some(r) = d.strip_prefix('[') {
        let (h, rest) = r
            .split_once(']')
            .ok_or_else(|| format!("invalid registry {d:?}"))?;
        if h.is_empty() || !h.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("invalid registry {d:?}"));
        }
        (None, rest.strip_prefix(':'))
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !ok {
            return Err(format!("invalid registry {d:?}"));
        }
    }
    if let Some(p) = port {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("invalid registry port in {d:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
