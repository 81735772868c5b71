//! Bitbucket's partial responses (`fields=`), applied generically to a JSON page.
//!
//! One comma-separated parameter. `-path` removes, `+path` adds (only
//! meaningful next to a keep-only list, since the simulator's default objects
//! already carry everything), a bare `path` switches to keep-only: only the
//! listed paths survive, so a page without `next` in the list loses its link.
//! Arrays are transparent (`values.hash` applies to every element) and `*`
//! matches any key at one level. A literal `+` in a query string decodes to a
//! space before this code sees it; such a field name is kept literally (it
//! matches nothing), which is how clients that forget `%2B` break on Bitbucket.

use serde_json::{Map, Value};

/// Applies a `fields` specification to a response body.
pub fn apply(value: Value, spec: &str) -> Value {
    let mut keep: Vec<Vec<&str>> = Vec::new();
    let mut add: Vec<Vec<&str>> = Vec::new();
    let mut remove: Vec<Vec<&str>> = Vec::new();
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        if let Some(p) = item.strip_prefix('-') {
            remove.push(p.split('.').collect());
        } else if let Some(p) = item.strip_prefix('+') {
            add.push(p.split('.').collect());
        } else {
            keep.push(item.split('.').collect());
        }
    }
    let mut value = if keep.is_empty() {
        value
    } else {
        keep.extend(add);
        let paths: Vec<&[&str]> = keep.iter().map(Vec::as_slice).collect();
        keep_paths(&value, &paths).unwrap_or_else(|| Value::Object(Map::new()))
    };
    for path in &remove {
        remove_path(&mut value, path);
    }
    value
}

/// The top-level keys of `values` items that a `fields` specification can
/// keep; `None` when it may keep all of them (no keep-only list, or a
/// wildcard). Lets the server skip building what would be thrown away.
pub fn kept_item_keys(spec: Option<&str>) -> Option<Vec<String>> {
    let spec = spec?;
    let items: Vec<&str> = spec.split(',').filter(|s| !s.is_empty()).collect();
    if !items
        .iter()
        .any(|i| !i.starts_with('-') && !i.starts_with('+'))
    {
        return None;
    }
    let mut keys = Vec::new();
    for item in items.iter().filter(|i| !i.starts_with('-')) {
        let path = item.trim_start_matches('+');
        let mut segs = path.split('.');
        match (segs.next(), segs.next()) {
            (Some("values" | "*"), None) | (Some("*"), _) | (Some("values"), Some("*")) => {
                return None
            }
            (Some("values"), Some(key)) => keys.push(key.to_owned()),
            _ => {}
        }
    }
    Some(keys)
}

/// What survives of `value` when only `paths` (relative to it) are kept.
fn keep_paths(value: &Value, paths: &[&[&str]]) -> Option<Value> {
    if paths.iter().any(|p| p.is_empty()) {
        return Some(value.clone());
    }
    match value {
        Value::Array(items) => {
            let kept: Vec<Value> = items.iter().filter_map(|v| keep_paths(v, paths)).collect();
            // An empty array is an answer (`parents: []`); an array whose
            // elements matched nothing is not.
            (items.is_empty() || !kept.is_empty()).then_some(Value::Array(kept))
        }
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, child) in map {
                let sub: Vec<&[&str]> = paths
                    .iter()
                    .filter(|p| p[0] == key || p[0] == "*")
                    .map(|p| &p[1..])
                    .collect();
                if sub.is_empty() {
                    continue;
                }
                if let Some(kept) = keep_paths(child, &sub) {
                    out.insert(key.clone(), kept);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        // `mainbranch: null` must survive `values.mainbranch.name`: null is
        // the answer, not a missing field.
        Value::Null => Some(Value::Null),
        _ => None,
    }
}

fn remove_path(value: &mut Value, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| remove_path(v, path)),
        Value::Object(map) => {
            if rest.is_empty() {
                if *first == "*" {
                    map.clear();
                } else {
                    map.remove(*first);
                }
            } else {
                for (key, child) in map.iter_mut() {
                    if *first == "*" || first == key {
                        remove_path(child, rest);
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::apply;
    use serde_json::json;

    fn page() -> serde_json::Value {
        json!({"pagelen": 2, "next": "n", "values": [
            {"hash": "a", "date": "d", "links": {"self": {"href": "x"}}, "parents": [], "committer": {"raw": "c"}},
            {"hash": "b", "date": "e", "links": {"self": {"href": "y"}}, "parents": [{"hash": "a", "links": {}}]}
        ]})
    }

    #[test]
    fn keep_only_drops_unlisted_including_next() {
        assert_eq!(
            apply(page(), "values.hash,values.parents.hash"),
            json!({"values": [{"hash": "a", "parents": []}, {"hash": "b", "parents": [{"hash": "a"}]}]})
        );
        assert_eq!(apply(page(), "values.hash,next")["next"], "n");
    }

    #[test]
    fn kept_item_keys_lists_what_to_build() {
        use super::kept_item_keys;
        assert_eq!(kept_item_keys(None), None);
        assert_eq!(kept_item_keys(Some("-links")), None);
        assert_eq!(kept_item_keys(Some("values.*.raw")), None);
        assert_eq!(
            kept_item_keys(Some("values.hash,values.author.raw,next,+values.committer")),
            Some(vec![
                "hash".to_owned(),
                "author".to_owned(),
                "committer".to_owned()
            ])
        );
    }

    #[test]
    fn removal_wildcard_and_addition() {
        let v = apply(page(), "-values.links.*");
        assert_eq!(v["values"][0]["links"], json!({}));
        let v = apply(page(), "-links,-values.links");
        assert!(v["values"][0].get("links").is_none());
        assert_eq!(v["next"], "n");
        let v = apply(page(), "values.hash,+values.committer");
        assert_eq!(
            v["values"][0],
            json!({"hash": "a", "committer": {"raw": "c"}})
        );
        assert_eq!(apply(page(), "+committer"), page());
        let v = apply(page(), "values.*.self");
        assert_eq!(v["values"][1], json!({"links": {"self": {"href": "y"}}}));
    }
}
