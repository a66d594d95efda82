//! What the relay will fetch and where it puts it: download URLs must be https on listed hosts,
//! and file names from the API become keys that cannot leave their export's folder.

use reqwest::redirect;
use url::Url;

use super::TransferError;

/// Longest file name kept in a key; S3 allows 1024 bytes for the whole key.
const MAX_FILE_NAME_LEN: usize = 200;
/// Redirect hops a download may take, each to an allowed host.
const MAX_REDIRECTS: usize = 5;

/// Which download URLs the relay will fetch: https (or http when allowed) on listed hosts.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    pub hosts: Vec<String>,
    pub allow_insecure_http: bool,
}

impl UrlPolicy {
    pub fn check(&self, url: &Url) -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure_http => {}
            scheme => return Err(format!("scheme {scheme}:// is not allowed, only https://")),
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if self.hosts.contains(&host) {
            Ok(())
        } else {
            Err(format!("host {host:?} is not in DOWNLOAD_HOSTS"))
        }
    }

    /// Parses a download URL and checks it.
    pub fn parse(&self, source: &str) -> Result<Url, TransferError> {
        let url = Url::parse(source).map_err(|e| TransferError::UrlRefused(format!("not a URL ({e})")))?;
        self.check(&url).map_err(TransferError::UrlRefused)?;
        Ok(url)
    }

    /// Redirects are followed a few hops, and only to hosts the policy allows.
    pub(super) fn redirects(self) -> redirect::Policy {
        redirect::Policy::custom(move |attempt| {
            // `previous` starts with the first URL, which is not a redirect.
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match self.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(reason) => attempt.error(format!("redirect refused: {reason}")),
            }
        })
    }
}

/// The key for one of an export's files: `{prefix}{export_id}/{name}`, where `name` is the API's
/// file name with anything but letters, digits, `.`, `-` and `_` replaced by `_`, so that no
/// name can leave the export's folder, and a leading `.` replaced too, so that no file can land
/// on the ledger's own objects (`manifest.json` and the dot-named ones beside it).
pub fn object_key(prefix: &str, export_id: &str, filename: &str) -> Result<String, TransferError> {
    let refuse =
        |why| Err(TransferError::BadFileName(filename.chars().take(MAX_FILE_NAME_LEN).collect(), why));
    if filename.is_empty() {
        return refuse("it is empty");
    }
    if filename.len() > MAX_FILE_NAME_LEN {
        return refuse("it is longer than 200 bytes");
    }
    let mut safe: String = filename
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    if safe.chars().all(|c| c == '.') {
        return refuse("it is only dots");
    }
    if safe.starts_with('.') {
        safe.replace_range(..1, "_");
    }
    if safe == "manifest.json" {
        return refuse("it is the name of the relay's own manifest");
    }
    Ok(format!("{prefix}{export_id}/{safe}"))
}

/// What the object says it is. Bytes are stored as downloaded, so a `.gz` stays gzip.
pub fn content_type(filename: &str) -> &'static str {
    let lower = filename.to_ascii_lowercase();
    if lower.ends_with(".gz") {
        "application/gzip"
    } else if lower.ends_with(".csv") {
        "text/csv"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_the_export_folder() {
        let key = |name: &str| object_key("p/", "e1", name);
        assert_eq!(
            key("properties_export_2026-02-17.csv.gz").unwrap(),
            "p/e1/properties_export_2026-02-17.csv.gz"
        );
        assert_eq!(key("../../x").unwrap(), "p/e1/_._.._x");
        assert_eq!(key(".chain.json").unwrap(), "p/e1/_chain.json", "not the ledger's");
        assert!(key("manifest.json").is_err());
        assert_eq!(key("/etc/passwd").unwrap(), "p/e1/_etc_passwd");
        assert_eq!(key("a/b").unwrap(), "p/e1/a_b");
        assert_eq!(key("tab\there\n").unwrap(), "p/e1/tab_here_");
        assert!(key("").is_err());
        assert!(key("..").is_err());
        assert!(key(&"a".repeat(201)).is_err());
        let longest = "a".repeat(200);
        assert_eq!(key(&longest).unwrap(), format!("p/e1/{longest}"), "200 bytes is kept");
    }

    #[test]
    fn urls_must_be_https_on_an_allowed_host() {
        let policy = UrlPolicy { hosts: vec!["storage.googleapis.com".into()], allow_insecure_http: false };
        let check = |u: &str| policy.check(&Url::parse(u).unwrap());
        assert!(check("https://storage.googleapis.com/b/o?X-Goog-Signature=1").is_ok());
        assert!(check("https://STORAGE.googleapis.com/b/o").is_ok());
        assert!(check("http://storage.googleapis.com/b/o").is_err());
        assert!(check("https://storage.googleapis.com.evil.com/o").is_err());
        assert!(check("https://169.254.169.254/latest/meta-data").is_err());
        assert!(check("file:///etc/passwd").is_err());
    }
}
