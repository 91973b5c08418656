//! URI template classification (lua-resty-radixtree's `common_route_data`)
//! and the full-path parameter check (`compare_param`).

use crate::router::tree::Slot;
use crate::router::PathMode;
use regex::{Regex, RegexBuilder};

/// Longest accepted URI template, as in APISIX's route schema.
pub(crate) const MAX_URI_LEN: usize = 4096;
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The capture name of an unnamed `*` segment, as lua-resty-radixtree uses.
const EXT_NAME: &str = ":ext";

/// One `uris` entry of a route, compiled.
#[derive(Debug)]
pub(crate) struct UriTemplate {
    /// The template as configured (`path_org`); its length orders routes.
    pub(crate) template: Box<str>,
    /// The radix-tree key the route is stored under.
    pub(crate) key: Box<str>,
    /// Exact path or prefix.
    pub(crate) slot: Slot,
    /// What else a request path must satisfy at that key.
    pub(crate) check: PathCheck,
}

/// The per-template check run after the tree lookup.
#[derive(Debug)]
pub(crate) enum PathCheck {
    /// Nothing beyond the key.
    None,
    /// A trailing `/*`: always passes, the rest of the path is captured as
    /// `:ext`.
    Ext,
    /// A parameter template: the whole path must match `re`; group `i + 1`
    /// is captured as `names[i]`.
    Regex {
        re: Box<Regex>,
        names: Box<[Box<str>]>,
    },
}

impl UriTemplate {
    /// Classifies a template. Errors are route-schema style messages.
    pub(crate) fn compile(template: &str, mode: PathMode) -> Result<Self, String> {
        if template.is_empty() {
            return Err("invalid configuration: property \"uri\" validation failed: string too short, expected at least 1, got 0".into());
        }
        if template.len() > MAX_URI_LEN {
            return Err(format!(
                "invalid configuration: property \"uri\" validation failed: string too long, expected at most {MAX_URI_LEN}, got {}",
                template.len()
            ));
        }
        let colon = match mode {
            PathMode::Params => template.find(':'),
            PathMode::Plain => None,
        };
        let star = template.find('*');
        let cut = match (colon, star) {
            (None, None) => {
                return Ok(UriTemplate {
                    template: template.into(),
                    key: template.into(),
                    slot: Slot::Exact,
                    check: PathCheck::None,
                })
            }
            (Some(c), Some(s)) => c.min(s),
            (Some(c), None) => c,
            (None, Some(s)) => s,
        };
        let is_param = colon.is_some() || star != Some(template.len() - 1);
        let check = if is_param {
            param_check(template, mode)?
        } else if template == "*" || template.ends_with("/*") {
            PathCheck::Ext
        } else {
            PathCheck::None
        };
        Ok(UriTemplate {
            template: template.into(),
            key: template[..cut].into(),
            slot: Slot::Prefix,
            check,
        })
    }

    /// Runs the check for a request `path` that reached this template's key;
    /// on success appends the captured parameters to `params`.
    pub(crate) fn check(&self, path: &str, params: &mut Vec<(String, String)>) -> bool {
        match &self.check {
            PathCheck::None => true,
            PathCheck::Ext => {
                let rest = path.get(self.key.len()..).unwrap_or("");
                params.push((EXT_NAME.to_string(), rest.to_string()));
                true
            }
            PathCheck::Regex { re, names } => {
                if !re.is_match(path) {
                    return false;
                }
                let Some(caps) = re.captures(path) else {
                    return false;
                };
                for (i, name) in names.iter().enumerate() {
                    if let Some(m) = caps.get(i + 1) {
                        params.push((name.to_string(), m.as_str().to_string()));
                    }
                }
                true
            }
        }
    }
}

/// Builds the full-path regex: `:name` segments (parameter mode only) match
/// `[^/]+`, `*name` segments match anything including `/`, other segments
/// are literal. A template without such segments is not checked further
/// (as in lua-resty-radixtree, where no names means no check).
fn param_check(template: &str, mode: PathMode) -> Result<PathCheck, String> {
    let mut pat = String::with_capacity(template.len() + 16);
    pat.push_str("(?s)^");
    let mut names: Vec<Box<str>> = Vec::new();
    for (i, seg) in template.split('/').enumerate() {
        if i > 0 {
            pat.push('/');
        }
        if let (PathMode::Params, Some(name)) = (mode, seg.strip_prefix(':')) {
            names.push(name.into());
            pat.push_str("([^/]+)");
        } else if let Some(name) = seg.strip_prefix('*') {
            names.push(if name.is_empty() {
                EXT_NAME.into()
            } else {
                name.into()
            });
            pat.push_str("(.*)");
        } else {
            pat.push_str(&regex::escape(seg));
        }
    }
    pat.push('$');
    if names.is_empty() {
        return Ok(PathCheck::None);
    }
    let re = RegexBuilder::new(&pat)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid uri template '{template}': {e}"))?;
    Ok(PathCheck::Regex {
        re: Box::new(re),
        names: names.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(t: &str, m: PathMode) -> UriTemplate {
        UriTemplate::compile(t, m).unwrap()
    }

    fn run(t: &UriTemplate, path: &str) -> Option<Vec<(String, String)>> {
        let mut p = Vec::new();
        t.check(path, &mut p).then_some(p)
    }

    #[test]
    fn classification_plain() {
        let t = c("/a/b", PathMode::Plain);
        assert_eq!((&*t.key, t.slot), ("/a/b", Slot::Exact));
        let t = c("/aa*", PathMode::Plain);
        assert_eq!((&*t.key, t.slot), ("/aa", Slot::Prefix));
        assert!(matches!(t.check, PathCheck::None));
        let t = c("/aa/*", PathMode::Plain);
        assert_eq!(&*t.key, "/aa/");
        assert!(matches!(t.check, PathCheck::Ext));
        assert_eq!(
            run(&t, "/aa/x/y").unwrap(),
            vec![(":ext".to_string(), "x/y".to_string())]
        );
        // `:` is literal in plain mode
        let t = c("/user/:id", PathMode::Plain);
        assert_eq!((&*t.key, t.slot), ("/user/:id", Slot::Exact));
        // `*` not at the end is a parameter even in plain mode
        let t = c("/a/*/c", PathMode::Plain);
        assert_eq!((&*t.key, t.slot), ("/a/", Slot::Prefix));
        assert_eq!(
            run(&t, "/a/x/y/c").unwrap(),
            vec![(":ext".to_string(), "x/y".to_string())]
        );
        assert!(run(&t, "/a/x/y/d").is_none());
    }

    #[test]
    fn classification_params() {
        let t = c("/user/:id/profile", PathMode::Params);
        assert_eq!((&*t.key, t.slot), ("/user/", Slot::Prefix));
        assert_eq!(
            run(&t, "/user/42/profile").unwrap(),
            vec![("id".to_string(), "42".to_string())]
        );
        assert!(run(&t, "/user/42/x/profile").is_none());
        assert!(run(&t, "/user//profile").is_none());
        let t = c("/file/:dir/*path", PathMode::Params);
        assert_eq!(&*t.key, "/file/");
        assert_eq!(
            run(&t, "/file/etc/a/b.txt").unwrap(),
            vec![
                ("dir".to_string(), "etc".to_string()),
                ("path".to_string(), "a/b.txt".to_string())
            ]
        );
        let t = c("/v.1/:x", PathMode::Params);
        assert!(run(&t, "/vX1/y").is_none(), "literal segments are escaped");
        assert!(run(&t, "/v.1/y").is_some());
        let t = c("/:a/", PathMode::Params);
        assert_eq!(&*t.key, "/");
        assert!(run(&t, "/x/").is_some());
        assert!(run(&t, "/x").is_none());
    }

    #[test]
    fn bad_templates() {
        assert!(UriTemplate::compile("", PathMode::Plain).is_err());
        assert!(UriTemplate::compile(&"a".repeat(MAX_URI_LEN + 1), PathMode::Plain).is_err());
    }
}
