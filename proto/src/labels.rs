//! Label selectors (matchLabels) and their matching rules.
use std::collections::BTreeMap;

/// True when every key/value of `selector` is present in `labels` (an empty selector matches all).
pub fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_matching() {
        let l: BTreeMap<_, _> = [
            ("app".to_string(), "web".to_string()),
            ("tier".into(), "fe".into()),
        ]
        .into();
        assert!(matches(&BTreeMap::new(), &l));
        assert!(matches(
            &[("app".to_string(), "web".to_string())].into(),
            &l
        ));
        assert!(!matches(
            &[("app".to_string(), "db".to_string())].into(),
            &l
        ));
    }
}
