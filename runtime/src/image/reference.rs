//! Image references, normalized the way Docker does: `nginx` → `docker.io/library/nginx:latest`.

use std::fmt;

use super::blob::{is_sha256_hex, Digest};
use super::ImageError;

const DEFAULT_DOMAIN: &str = "docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A fully qualified image reference: `domain/path[:tag][@digest]`.
///
/// At least one of tag and digest is present: a bare name gets the tag `latest`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes a reference such as `nginx`, `api:v2` or
    /// `registry.example:5000/app@sha256:…`.
    pub fn parse(reference: &str) -> Result<Reference, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidReference {
            reference: reference.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(Digest::parse(digest)?)),
            None => (reference, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(invalid("the repository name is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("the repository name is longer than 255 characters"));
        }
        if let Some(tag) = tag {
            check_tag(tag).map_err(|reason| invalid(&reason))?;
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if looks_like_domain(first) => (first, rest.to_owned()),
            _ => (DEFAULT_DOMAIN, name.to_owned()),
        };
        let domain = if domain == "index.docker.io" { DEFAULT_DOMAIN } else { domain };
        check_domain(domain).map_err(|reason| invalid(&reason))?;
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path
        };
        for component in path.split('/') {
            check_path_component(component).map_err(|reason| invalid(&reason))?;
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Reference { domain: domain.to_owned(), path, tag, digest })
    }

    /// The registry host, with its port if it has one, e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry, e.g. `library/nginx`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The repository, `domain/path`, without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Parses an image id: `sha256:<hex>` or the bare 64 hex digits.
///
/// Like Docker, a bare 64-hex-digit string is always an id, never a repository name.
pub fn parse_image_id(id: &str) -> Option<Digest> {
    if is_sha256_hex(id) {
        return Digest::parse(&format!("sha256:{id}")).ok();
    }
    id.starts_with("sha256:").then(|| Digest::parse(id).ok()).flatten()
}

/// Whether the first component of a name is a registry host rather than a path component.
fn looks_like_domain(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let host_ok = !host.is_empty()
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !host_ok {
        return Err(format!("registry host {host:?} is not a valid host name"));
    }
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("registry port {port:?} is not a number"));
        }
    }
    Ok(())
}

fn check_path_component(component: &str) -> Result<(), String> {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "repository component {component:?} must be lowercase letters and digits, \
             separated by '.', '_' or '-'"
        ))
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let bytes = tag.as_bytes();
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let valid = bytes.len() <= MAX_TAG_LEN
        && bytes.first().is_some_and(word)
        && bytes.iter().all(|b| word(b) || matches!(b, b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{expect, Expect};

    use super::*;

    fn check(inputs: &[&str], expect: Expect) {
        let actual: String = inputs
            .iter()
            .map(|input| match Reference::parse(input) {
                Ok(reference) => format!("{input} -> {reference}\n"),
                Err(err) => format!("{input} -> error: {err}\n"),
            })
            .collect();
        expect.assert_eq(&actual);
    }

    #[test]
    fn normalizes_like_docker() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        check(
            &[
                "nginx",
                "api:v2",
                "library/nginx:1.25",
                "docker.io/nginx",
                "index.docker.io/nginx:1",
                "user/app",
                "registry.example:5000/app:v2",
                "registry.example/team/app",
                "localhost/app",
                "localhost:5000/app:dev",
                &format!("nginx@{digest}"),
                &format!("nginx:1.25@{digest}"),
                "Nginx",
                "nginx:",
                "nginx:-bad",
                "nginx@sha256:abc",
                "app/../etc",
                "",
            ],
            expect![[r#"
                nginx -> docker.io/library/nginx:latest
                api:v2 -> docker.io/library/api:v2
                library/nginx:1.25 -> docker.io/library/nginx:1.25
                docker.io/nginx -> docker.io/library/nginx:latest
                index.docker.io/nginx:1 -> docker.io/library/nginx:1
                user/app -> docker.io/user/app:latest
                registry.example:5000/app:v2 -> registry.example:5000/app:v2
                registry.example/team/app -> registry.example/team/app:latest
                localhost/app -> localhost/app:latest
                localhost:5000/app:dev -> localhost:5000/app:dev
                nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef -> docker.io/library/nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
                nginx:1.25@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef -> docker.io/library/nginx:1.25@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
                Nginx -> error: invalid image reference "Nginx": repository component "Nginx" must be lowercase letters and digits, separated by '.', '_' or '-'
                nginx: -> error: invalid image reference "nginx:": tag "" must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'
                nginx:-bad -> error: invalid image reference "nginx:-bad": tag "-bad" must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'
                nginx@sha256:abc -> error: invalid digest "sha256:abc": expected sha256:<64 lowercase hex digits>
                app/../etc -> error: invalid image reference "app/../etc": repository component ".." must be lowercase letters and digits, separated by '.', '_' or '-'
                 -> error: invalid image reference "": the repository name is empty
            "#]],
        );
    }

    #[test]
    fn image_ids() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_image_id(&hex).map(String::from), Some(format!("sha256:{hex}")));
        assert_eq!(parse_image_id(&format!("sha256:{hex}")).map(String::from), Some(format!("sha256:{hex}")));
        assert_eq!(parse_image_id("nginx"), None);
        assert_eq!(parse_image_id("sha256:abc"), None);
    }
}
