//! Credentials: service tokens and the keys that sign grant and upload tokens.

use super::*;

#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// `VTX_SERVICE_TOKEN`: bearer tokens of internal services, comma-separated (list a new
    /// one beside the old while rotating). When unset, read from `VTX_SERVICE_TOKEN_FILE`
    /// (default `.vtx/service-token`, which `deploy/local/setup.sh` writes). The gateway
    /// refuses to start without one.
    pub service_tokens: Vec<Secret>,
    /// `VTX_UPLOAD_TOKEN_KEYS`: keys that sign grant and upload tokens, `id:key` separated by
    /// commas or newlines, newest first (it signs; every listed key verifies the tokens it
    /// signed, so rotating lists a new key first and drops the old once its tokens expired).
    /// Each key at least 32 bytes; ids of letters, digits, `-` and `_`. `VTX_UPLOAD_TOKEN_SECRET`
    /// (one key, id `s`) is read when it is unset. Neither: one key derived from the first
    /// service token.
    pub signing_keys: Vec<(String, Secret)>,
    /// `VTX_GRANT_TTL_SECS`: default lifetime of a grant token.
    pub grant_ttl: Duration,
}

/// The token signing keys (`VTX_UPLOAD_TOKEN_KEYS`, or `VTX_UPLOAD_TOKEN_SECRET`), checked.
fn signing_keys(
    env: &Env<'_, impl Fn(&str) -> Option<String>>,
) -> anyhow::Result<Vec<(String, Secret)>> {
    let keys: Vec<(String, String)> =
        match (env.0)("VTX_UPLOAD_TOKEN_KEYS").filter(|s| !s.trim().is_empty()) {
            Some(list) => list
                .split([',', '\n'])
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| match k.split_once(':') {
                    Some((id, key)) => Ok((id.trim().to_string(), key.to_string())),
                    None => bail!("VTX_UPLOAD_TOKEN_KEYS: write each key as id:key"),
                })
                .collect::<anyhow::Result<_>>()?,
            None => (env.0)("VTX_UPLOAD_TOKEN_SECRET")
                .filter(|s| !s.is_empty())
                .map(|k| vec![("s".to_string(), k)])
                .unwrap_or_default(),
        };
    for (id, key) in &keys {
        if id.is_empty()
            || id.len() > 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("signing key id {id:?}: 1 to 32 letters, digits, '-' or '_'");
        }
        if key.len() < 32 {
            bail!("signing key {id:?}: at least 32 bytes");
        }
    }
    let mut ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        bail!("VTX_UPLOAD_TOKEN_KEYS: key ids must differ");
    }
    Ok(keys
        .into_iter()
        .map(|(id, k)| (id, Secret::new(k)))
        .collect())
}

impl AuthConfig {
    pub(super) fn load(env: &Env<'_, impl Fn(&str) -> Option<String>>) -> anyhow::Result<Self> {
        let raw = match (env.0)("VTX_SERVICE_TOKEN").filter(|s| !s.trim().is_empty()) {
            Some(v) => v,
            None => {
                let file = env.string("VTX_SERVICE_TOKEN_FILE", ".vtx/service-token");
                match std::fs::read_to_string(&file) {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(e) => return Err(e).with_context(|| format!("reading {file}")),
                }
            }
        };
        let service_tokens: Vec<Secret> = raw
            .split([',', '\n'])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .collect();
        if service_tokens.iter().any(|t| t.expose().len() < 16) {
            bail!("VTX_SERVICE_TOKEN: each token must be at least 16 characters");
        }
        Ok(Self {
            service_tokens,
            signing_keys: signing_keys(env)?,
            grant_ttl: Duration::from_secs(env.parse("VTX_GRANT_TTL_SECS", 3600)?),
        })
    }
}
