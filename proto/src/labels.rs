//! Label selectors (matchLabels and matchExpressions) and their matching rules.
use crate::api::LabelSelector;
use std::collections::BTreeMap;

/// True when every key/value of `selector` is present in `labels` (an empty selector matches all).
pub fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl LabelSelector {
    /// Whether the labels satisfy every matchLabels pair and every matchExpression. An empty
    /// selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        matches(&self.match_labels, labels)
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    // Refused at apply; an unknown operator selects nothing.
                    _ => false,
                }
            })
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// `a=b,c in (d,e)`, as kubectl prints selectors.
    pub fn to_selector_string(&self) -> String {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.extend(
            self.match_expressions
                .iter()
                .map(|r| match r.operator.as_str() {
                    "Exists" => r.key.clone(),
                    "DoesNotExist" => format!("!{}", r.key),
                    op => format!(
                        "{} {} ({})",
                        r.key,
                        op.to_ascii_lowercase(),
                        r.values.join(",")
                    ),
                }),
        );
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions() {
        use crate::api::LabelSelectorRequirement;
        let l: BTreeMap<_, _> = [("app".to_string(), "web".to_string())].into();
        let sel = |op: &str, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        };
        assert!(sel("In", &["web", "api"]).matches(&l));
        assert!(!sel("NotIn", &["web"]).matches(&l));
        assert!(sel("Exists", &[]).matches(&l));
        assert!(!sel("DoesNotExist", &[]).matches(&l));
        assert!(sel("NotIn", &["web"]).matches(&BTreeMap::new()));
        assert_eq!(
            sel("In", &["web", "api"]).to_selector_string(),
            "app in (web,api)"
        );
    }

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
