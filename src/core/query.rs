//! Query templating: substitutes `{{ namespace }}`, `{{ target }}`, `{{ canary }}`, `{{ stable }}`,
//! `{{ service }}`, `{{ interval }}`, `{{ revision }}`, `{{ workload }}` and `{{ args.NAME }}` into
//! a PromQL template, and resolves a metric (with its template, if any) into the queries a check
//! runs. Pure: no I/O, no clock.
//!
//! # Why no value can change the shape of a query
//!
//! The template is lexed, not the output: each placeholder's context (inside a `"..."` or `'...'`
//! string, inside a `` `...` `` raw string, or outside any string) is decided by the template text
//! alone, and every value is written so that it cannot leave that context:
//!
//! - inside a quoted string the value is escaped: backslash, the delimiting quote, and every
//!   character outside printable ASCII are written as escapes (`\n`, `\u00e9`, `\U0001f600`), so the
//!   output is plain ASCII whatever the value. Only the *delimiting* quote is escaped: PromQL
//!   unquotes with Go's `strconv.Unquote`, which rejects `\'` inside `"..."` (and `\"` inside `'...'`).
//!   U+FFFD is escaped too, because the PromQL lexer takes it for an encoding error and ends the
//!   string there.
//! - a raw string has no escapes, so a value holding a backtick or a control character is refused;
//! - outside strings a value must be one token: an identifier (a label or metric name; not a PromQL
//!   keyword), a number, or a duration. `{{ interval }}` is always written as a PromQL duration.
//!
//! Kubernetes names (`namespace`, `target`, `canary`, `stable`, `service`, `workload`) and the
//! `revision` are also checked against their patterns before use, so a bad name is an error that
//! names the variable, not a query that silently matches nothing.
//!
//! Regular expressions: a name substituted into a `=~` matcher is escaped for the string, not for
//! the regex; Kubernetes names can only bring `.` (any character) and `-` into it.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use crate::api::duration::DURATION_PATTERN;
use crate::api::{
    ComparisonMethod, Duration, LABEL_PATTERN, MetricSpec, NAME_PATTERN, TemplateArg, TemplateSpec,
};

/// The values a query template may use, for one canary at one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variables {
    /// The Canary's namespace.
    pub namespace: String,
    /// The target Deployment (the stable workload).
    pub target: String,
    /// The canary Deployment (`<target>-canary`).
    pub canary: String,
    /// The stable Deployment (the target's name).
    pub stable: String,
    /// The stable Service.
    pub service: String,
    /// The analysis interval; a metric's own `interval` overrides it.
    pub interval: std::time::Duration,
    /// The revision (pod-template hash) under analysis.
    pub revision: String,
}

/// Which side `{{ workload }}` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Canary,
    Stable,
}

/// The queries one check of one metric runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queries {
    /// The metric's query with `{{ workload }}` = the canary.
    pub canary: String,
    /// With a comparison: the same query with `{{ workload }}` = stable.
    pub stable: Option<String>,
    /// The count query (`totalQuery`) for the canary, when the metric declares one: how many
    /// requests the check's window holds (for `TwoProportion`, the denominator too).
    pub canary_total: Option<String>,
    /// With a comparison and a count query: the count query for stable.
    pub stable_total: Option<String>,
}

/// Rendering a query template failed; the query is never sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderQueryError {
    #[error("failed to render query: unknown variable {{{{ {name} }}}}")]
    UnknownVariable { name: String },
    #[error("failed to render query: argument {name:?} has no value and no default")]
    MissingArgument { name: String },
    #[error("failed to render query: argument {name:?} is not declared by the template{}",
        if name == "min-requests" {
            " (the shipped templates' min-requests is now the metric's minSamples: set `minSamples` instead)"
        } else {
            ""
        })]
    UndeclaredArgument { name: String },
    #[error("failed to render query: `{{{{` at byte {offset} is never closed by `}}}}`")]
    UnclosedPlaceholder { offset: usize },
    #[error("failed to render query: {variable} {value:?} is not a valid Kubernetes name")]
    InvalidName { variable: String, value: String },
    #[error("failed to render query: interval {value:?} is not a positive duration")]
    InvalidInterval { value: String },
    #[error(
        "failed to render query: {variable} is used outside a string literal, where its value must be one identifier, number or duration"
    )]
    UnsafeBareValue { variable: String },
    #[error(
        "failed to render query: {variable} is used in a raw (backtick) string, where its value must not hold a backtick or control character"
    )]
    UnsafeRawValue { variable: String },
    #[error(
        "failed to resolve metric {metric}: a comparison needs {{{{ workload }}}} in the query, or stable would be measured by the canary's query"
    )]
    ComparisonWithoutWorkload { metric: String },
    #[error("failed to resolve metric {metric}: it has no query (inline or from its template)")]
    NoQuery { metric: String },
    #[error(
        "failed to resolve metric {metric}: the TwoProportion comparison needs totalQuery (inline or from its template)"
    )]
    NoTotalQuery { metric: String },
}

static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(NAME_PATTERN).expect("NAME_PATTERN is a valid regex"));
static LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(LABEL_PATTERN).expect("LABEL_PATTERN is a valid regex"));
static DURATION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(DURATION_PATTERN).expect("DURATION_PATTERN is a valid regex"));
/// One token that is safe outside a string: identifier, number, or PromQL duration.
static BARE_TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[A-Za-z_:][A-Za-z0-9_:]*|[0-9]+(?:\.[0-9]+)?|(?:[0-9]+(?:ms|s|m|h|d|w|y))+)$")
        .expect("the bare-token pattern is a valid regex")
});

/// PromQL keywords: an identifier that is one would change how the tokens around it combine.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "atan2",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "start",
    "end",
];

/// Where a placeholder stands in the template text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    Bare,
    Quoted(char),
    Raw,
    Comment,
}

/// Substitutes every placeholder of `template`. `args` are the final argument values (see
/// [`template_args`]).
pub fn render(
    template: &str,
    vars: &Variables,
    workload: Workload,
    args: &BTreeMap<String, String>,
) -> Result<String, RenderQueryError> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut context = Context::Bare;
    let mut rest = template;
    let mut offset = 0;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("{{") {
            let close = rest
                .find("}}")
                .ok_or(RenderQueryError::UnclosedPlaceholder { offset })?;
            let name = rest[2..close].trim();
            let (variable, value) = lookup(name, vars, workload, args)?;
            out.push_str(&encode(&variable, &value, context)?);
            offset += close + 2;
            rest = &rest[close + 2..];
            continue;
        }
        let mut len = c.len_utf8();
        out.push(c);
        context = match (context, c) {
            (Context::Bare, '"' | '\'') => Context::Quoted(c),
            (Context::Bare, '`') => Context::Raw,
            (Context::Bare, '#') => Context::Comment,
            (Context::Quoted(_), '\\') => {
                // The escaped character is copied as is and cannot end the string.
                if let Some(next) = rest[1..].chars().next() {
                    out.push(next);
                    len += next.len_utf8();
                }
                context
            }
            (Context::Quoted(quote), c) if c == quote => Context::Bare,
            (Context::Raw, '`') => Context::Bare,
            (Context::Comment, '\n') => Context::Bare,
            (Context::Bare | Context::Quoted(_) | Context::Raw | Context::Comment, _) => context,
        };
        offset += len;
        rest = &rest[len..];
    }
    Ok(out)
}

/// A placeholder's value, checked where it has a pattern, with the name used in errors.
/// `Value::Interval` is kept apart because it is written as a duration in every context.
fn lookup(
    name: &str,
    vars: &Variables,
    workload: Workload,
    args: &BTreeMap<String, String>,
) -> Result<(String, Value), RenderQueryError> {
    let named = |variable: &str, value: &str, pattern: &Regex| {
        if value.len() <= 253 && pattern.is_match(value) {
            Ok((variable.to_owned(), Value::Text(value.to_owned())))
        } else {
            Err(RenderQueryError::InvalidName {
                variable: variable.to_owned(),
                value: value.to_owned(),
            })
        }
    };
    match name {
        "namespace" => named(name, &vars.namespace, &LABEL),
        "target" => named(name, &vars.target, &NAME),
        "canary" => named(name, &vars.canary, &NAME),
        "stable" => named(name, &vars.stable, &NAME),
        "service" => named(name, &vars.service, &LABEL),
        "revision" => named(name, &vars.revision, &LABEL),
        "workload" => match workload {
            Workload::Canary => named(name, &vars.canary, &NAME),
            Workload::Stable => named(name, &vars.stable, &NAME),
        },
        "interval" => Ok((
            name.to_owned(),
            Value::Interval(promql_duration(vars.interval)?),
        )),
        _ => match name.strip_prefix("args.") {
            Some(arg) => match args.get(arg) {
                Some(value) => Ok((name.to_owned(), Value::Text(value.clone()))),
                None => Err(RenderQueryError::MissingArgument {
                    name: arg.to_owned(),
                }),
            },
            None => Err(RenderQueryError::UnknownVariable {
                name: name.to_owned(),
            }),
        },
    }
}

enum Value {
    Text(String),
    Interval(String),
}

fn encode(variable: &str, value: &Value, context: Context) -> Result<String, RenderQueryError> {
    let text = match value {
        // A duration is `[0-9a-z]+`: the same text is safe in every context.
        Value::Interval(duration) => return Ok(duration.clone()),
        Value::Text(text) => text,
    };
    match context {
        Context::Quoted(quote) => Ok(escape_string(text, quote)),
        Context::Raw => {
            if text.chars().any(|c| c == '`' || c.is_control()) {
                Err(RenderQueryError::UnsafeRawValue {
                    variable: variable.to_owned(),
                })
            } else {
                Ok(text.clone())
            }
        }
        Context::Bare | Context::Comment => {
            if BARE_TOKEN.is_match(text) && !KEYWORDS.contains(&text.to_ascii_lowercase().as_str())
            {
                Ok(text.clone())
            } else {
                Err(RenderQueryError::UnsafeBareValue {
                    variable: variable.to_owned(),
                })
            }
        }
    }
}

/// Escapes `value` for a PromQL string delimited by `quote`; the result is printable ASCII.
pub fn escape_string(value: &str, quote: char) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xFFFF => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    out
}

/// `interval` as a PromQL duration (`30s`, `1m30s`, `500ms`), refusing zero.
pub fn promql_duration(interval: std::time::Duration) -> Result<String, RenderQueryError> {
    let text = Duration(interval).to_string();
    if interval.is_zero() || !DURATION.is_match(&text) {
        return Err(RenderQueryError::InvalidInterval { value: text });
    }
    Ok(text)
}

/// The final argument values: each declared argument's given value, else its default. A value
/// for an undeclared argument is an error (a misspelt name would otherwise be silently ignored).
pub fn template_args(
    declared: &[TemplateArg],
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, RenderQueryError> {
    if let Some(name) = given
        .keys()
        .find(|name| !declared.iter().any(|arg| &arg.name == *name))
    {
        return Err(RenderQueryError::UndeclaredArgument { name: name.clone() });
    }
    declared
        .iter()
        .map(|arg| match given.get(&arg.name).or(arg.default.as_ref()) {
            Some(value) => Ok((arg.name.clone(), value.clone())),
            None => Err(RenderQueryError::MissingArgument {
                name: arg.name.clone(),
            }),
        })
        .collect()
}

/// Resolves `metric` (with the template it names, when it names one) into the queries a check
/// runs: the canary query; with a comparison, the same query for stable; with `TwoProportion`,
/// the total queries too. The metric's fields override the template's.
pub fn queries(
    metric: &MetricSpec,
    template: Option<&TemplateSpec>,
    vars: &Variables,
) -> Result<Queries, RenderQueryError> {
    let query = metric
        .query
        .as_deref()
        .or(template.map(|t| t.query.as_str()))
        .ok_or_else(|| RenderQueryError::NoQuery {
            metric: metric.name.clone(),
        })?;
    let args = match template {
        Some(template) => template_args(&template.args, &metric.args)?,
        None => metric.args.clone(),
    };
    let vars = Variables {
        interval: metric.interval.map_or(vars.interval, Duration::as_std),
        ..vars.clone()
    };
    let compare = metric
        .compare
        .as_ref()
        .or(template.and_then(|t| t.compare.as_ref()));
    let method = compare.map(|c| c.method);
    let canary = render(query, &vars, Workload::Canary, &args)?;
    let stable = match method {
        Some(
            ComparisonMethod::Difference
            | ComparisonMethod::Ratio
            | ComparisonMethod::TwoProportion,
        ) => Some(render(query, &vars, Workload::Stable, &args)?),
        None => None,
    };
    if stable.as_ref() == Some(&canary) {
        return Err(RenderQueryError::ComparisonWithoutWorkload {
            metric: metric.name.clone(),
        });
    }
    // The count query is the evidence a verdict stands on: the canary's count for every metric
    // that declares one, and with a comparison the stable side's too.
    let total = metric
        .total_query
        .as_deref()
        .or(template.and_then(|t| t.total_query.as_deref()));
    if method == Some(ComparisonMethod::TwoProportion) && total.is_none() {
        return Err(RenderQueryError::NoTotalQuery {
            metric: metric.name.clone(),
        });
    }
    let (canary_total, stable_total) = match total {
        Some(total) => (
            Some(render(total, &vars, Workload::Canary, &args)?),
            match method {
                Some(_) => Some(render(total, &vars, Workload::Stable, &args)?),
                None => None,
            },
        ),
        None => (None, None),
    };
    Ok(Queries {
        canary,
        stable,
        canary_total,
        stable_total,
    })
}

/// A query that does not parse as PromQL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("PromQL does not parse: {reason}")]
pub struct ParseQueryError {
    pub reason: String,
}

/// Parses a rendered query and returns how far back in time it reads: the largest
/// `offset + range` over its range selectors and subqueries (an instant selector reads the newest
/// sample, so only its offset counts). This is the query's *window*: a check's evidence lies in
/// `[now - window, now]`.
///
/// Parsed with the `promql-parser` crate (the Prometheus grammar, with its type checks: `rate()`
/// of an instant vector is refused). Where that grammar and the server disagree, the server's
/// `bad_data` answer counts the same way (see `Sample::Invalid`).
pub fn parse_window(promql: &str) -> Result<std::time::Duration, ParseQueryError> {
    let expr = promql_parser::parser::parse(promql).map_err(|reason| ParseQueryError {
        reason: reason.trim().to_owned(),
    })?;
    Ok(lookback(&expr))
}

fn lookback(expr: &promql_parser::parser::Expr) -> std::time::Duration {
    use promql_parser::parser::{Expr, Offset};
    use std::time::Duration as Std;
    let shifted = |offset: &Option<Offset>, span: Std| match offset {
        None => span,
        Some(Offset::Pos(by)) => span.saturating_add(*by),
        Some(Offset::Neg(by)) => span.saturating_sub(*by),
    };
    match expr {
        Expr::Aggregate(e) => lookback(&e.expr).max(e.param.as_deref().map_or(Std::ZERO, lookback)),
        Expr::Unary(e) => lookback(&e.expr),
        Expr::Binary(e) => lookback(&e.lhs).max(lookback(&e.rhs)),
        Expr::Paren(e) => lookback(&e.expr),
        Expr::Subquery(e) => shifted(&e.offset, e.range.saturating_add(lookback(&e.expr))),
        Expr::MatrixSelector(e) => shifted(&e.vs.offset, e.range),
        Expr::VectorSelector(e) => shifted(&e.offset, Std::ZERO),
        Expr::Call(e) => e
            .args
            .args
            .iter()
            .map(|a| lookback(a))
            .max()
            .unwrap_or(Std::ZERO),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => Std::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Comparison;

    fn vars() -> Variables {
        Variables {
            namespace: "shop".into(),
            target: "checkout".into(),
            canary: "checkout-canary".into(),
            stable: "checkout".into(),
            service: "checkout".into(),
            interval: std::time::Duration::from_secs(60),
            revision: "7d9f8c6b5".into(),
        }
    }

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn render_canary(template: &str, given: &[(&str, &str)]) -> Result<String, RenderQueryError> {
        render(template, &vars(), Workload::Canary, &args(given))
    }

    #[test]
    fn every_variable_is_substituted_with_or_without_spaces_in_the_braces() {
        let out = render_canary(
            r#"x{a="{{namespace}}",b="{{ target }}",c="{{  canary  }}",d="{{ stable }}",e="{{ service }}",f="{{ revision }}",g="{{ workload }}",h="{{ args.code }}"}[{{ interval }}]"#,
            &[("code", "5..")],
        )
        .unwrap();
        assert_eq!(
            out,
            r#"x{a="shop",b="checkout",c="checkout-canary",d="checkout",e="checkout",f="7d9f8c6b5",g="checkout-canary",h="5.."}[1m]"#
        );
    }

    #[test]
    fn workload_names_the_stable_deployment_for_the_stable_side() {
        let out = render(
            r#"x{pod=~"{{ workload }}-.*"}"#,
            &vars(),
            Workload::Stable,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(out, r#"x{pod=~"checkout-.*"}"#);
    }

    #[test]
    fn hostile_values_stay_inside_their_double_quoted_string() {
        let hostile = "\"} or vector(1) #\n\\'\u{0}é😀\u{fffd}";
        let out = render_canary(r#"x{a="{{ args.v }}"}"#, &[("v", hostile)]).unwrap();
        assert_eq!(
            out,
            r#"x{a="\"} or vector(1) #\n\\'\u0000\u00e9\U0001f600\ufffd"}"#
        );
        assert!(out.is_ascii());
    }

    /// Go's unquoting of the escapes `escape_string` writes, for the round-trip property.
    fn unescape(escaped: &str) -> Option<String> {
        let mut out = String::new();
        let mut chars = escaped.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next()? {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => out.push(char::from_u32(
                    u32::from_str_radix(&chars.by_ref().take(4).collect::<String>(), 16).ok()?,
                )?),
                'U' => out.push(char::from_u32(
                    u32::from_str_radix(&chars.by_ref().take(8).collect::<String>(), 16).ok()?,
                )?),
                other @ ('\\' | '"' | '\'') => out.push(other),
                _ => return None,
            }
        }
        Some(out)
    }

    proptest::proptest! {
        #[test]
        fn any_value_escapes_to_printable_ascii_that_unquotes_to_itself(value in proptest::prelude::any::<String>()) {
            for quote in ['"', '\''] {
                let escaped = escape_string(&value, quote);
                proptest::prop_assert!(escaped.bytes().all(|b| (b' '..=b'~').contains(&b)));
                // The string cannot end early: every delimiting quote is escaped.
                let unescaped_quotes = escaped
                    .char_indices()
                    .filter(|(i, c)| {
                        *c == quote
                            && escaped[..*i].chars().rev().take_while(|b| *b == '\\').count() % 2 == 0
                    })
                    .count();
                proptest::prop_assert_eq!(unescaped_quotes, 0);
                proptest::prop_assert_eq!(unescape(&escaped), Some(value.clone()));
            }
        }
    }

    #[test]
    fn in_single_quoted_strings_only_the_single_quote_is_escaped() {
        let out = render_canary("x{a='{{ args.v }}'}", &[("v", r#"') or "x"#)]).unwrap();
        assert_eq!(out, r#"x{a='\') or "x'}"#);
    }

    #[test]
    fn an_escaped_quote_in_the_template_does_not_end_the_string() {
        let out = render_canary(r#"x{a="q\"{{ args.v }}"}"#, &[("v", "\"")]).unwrap();
        assert_eq!(out, r#"x{a="q\"\""}"#);
    }

    #[test]
    fn a_value_outside_strings_must_be_a_single_token() {
        assert_eq!(
            render_canary("histogram_quantile({{ args.q }}, x)", &[("q", "0.99")]).unwrap(),
            "histogram_quantile(0.99, x)"
        );
        assert_eq!(
            render_canary(r#"x{ {{ args.l }}="a" }"#, &[("l", "kubernetes_pod_name")]).unwrap(),
            r#"x{ kubernetes_pod_name="a" }"#
        );
        for hostile in [
            "1) or vector(1",
            "a b",
            "or",
            "x\n",
            "",
            "1e9",
            "-1",
            "\"a\"",
        ] {
            assert_eq!(
                render_canary("x > {{ args.q }}", &[("q", hostile)]),
                Err(RenderQueryError::UnsafeBareValue {
                    variable: "args.q".into()
                }),
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn a_name_with_a_dash_cannot_be_used_outside_a_string() {
        assert_eq!(
            render_canary("{{ canary }}", &[]),
            Err(RenderQueryError::UnsafeBareValue {
                variable: "canary".into()
            })
        );
    }

    #[test]
    fn placeholders_in_comments_are_held_to_the_bare_rule() {
        assert!(render_canary("x # {{ args.v }}", &[("v", "a\nvector(1)")]).is_err());
    }

    #[test]
    fn a_raw_string_refuses_backticks_and_control_characters() {
        assert_eq!(
            render_canary("x{a=`{{ args.v }}`}", &[("v", "a.*")]).unwrap(),
            "x{a=`a.*`}"
        );
        for hostile in ["`} or vector(1)", "a\nb"] {
            assert_eq!(
                render_canary("x{a=`{{ args.v }}`}", &[("v", hostile)]),
                Err(RenderQueryError::UnsafeRawValue {
                    variable: "args.v".into()
                })
            );
        }
    }

    #[test]
    fn names_are_checked_against_the_kubernetes_pattern() {
        let mut bad = vars();
        bad.namespace = "shop\"} or vector(1)".into();
        assert_eq!(
            render(
                r#"x{n="{{ namespace }}"}"#,
                &bad,
                Workload::Canary,
                &BTreeMap::new()
            ),
            Err(RenderQueryError::InvalidName {
                variable: "namespace".into(),
                value: "shop\"} or vector(1)".into()
            })
        );
        let mut bad = vars();
        bad.canary = "Checkout".into();
        assert!(matches!(
            render(
                r#"x{n="{{ workload }}"}"#,
                &bad,
                Workload::Canary,
                &BTreeMap::new()
            ),
            Err(RenderQueryError::InvalidName { variable, .. }) if variable == "workload"
        ));
    }

    #[test]
    fn the_interval_is_written_as_a_promql_duration_and_zero_is_refused() {
        let mut v = vars();
        v.interval = std::time::Duration::from_secs(90);
        assert_eq!(
            render(
                "rate(x[{{ interval }}])",
                &v,
                Workload::Canary,
                &BTreeMap::new()
            )
            .unwrap(),
            "rate(x[1m30s])"
        );
        v.interval = std::time::Duration::from_millis(1500);
        assert_eq!(promql_duration(v.interval).unwrap(), "1s500ms");
        v.interval = std::time::Duration::ZERO;
        assert!(matches!(
            render(
                "rate(x[{{ interval }}])",
                &v,
                Workload::Canary,
                &BTreeMap::new()
            ),
            Err(RenderQueryError::InvalidInterval { .. })
        ));
    }

    #[test]
    fn an_unknown_variable_or_missing_argument_is_named_in_the_error() {
        assert_eq!(
            render_canary("{{ pod }}", &[]),
            Err(RenderQueryError::UnknownVariable { name: "pod".into() })
        );
        assert_eq!(
            render_canary(r#"x{a="{{ args.code }}"}"#, &[]),
            Err(RenderQueryError::MissingArgument {
                name: "code".into()
            })
        );
        assert_eq!(
            render_canary("x{{ namespace", &[]),
            Err(RenderQueryError::UnclosedPlaceholder { offset: 1 })
        );
        let message = render_canary("{{ pod }}", &[]).unwrap_err().to_string();
        assert!(message.contains("{{ pod }}"), "{message}");
    }

    #[test]
    fn template_args_take_the_given_value_else_the_default() {
        let declared = vec![
            TemplateArg {
                name: "code".into(),
                default: Some("5..".into()),
                description: None,
            },
            TemplateArg {
                name: "ingress".into(),
                default: None,
                description: None,
            },
        ];
        assert_eq!(
            template_args(&declared, &args(&[("ingress", "web")])).unwrap(),
            args(&[("code", "5.."), ("ingress", "web")])
        );
        assert_eq!(
            template_args(&declared, &args(&[("code", "4..")])),
            Err(RenderQueryError::MissingArgument {
                name: "ingress".into()
            })
        );
        assert_eq!(
            template_args(&declared, &args(&[("ingress", "web"), ("ingres", "x")])),
            Err(RenderQueryError::UndeclaredArgument {
                name: "ingres".into()
            })
        );
    }

    fn template(query: &str, total: Option<&str>) -> TemplateSpec {
        TemplateSpec {
            query: query.into(),
            total_query: total.map(Into::into),
            args: vec![TemplateArg {
                name: "code".into(),
                default: Some("5..".into()),
                description: None,
            }],
            ..TemplateSpec::default()
        }
    }

    #[test]
    fn a_plain_metric_resolves_to_the_canary_query_only() {
        let metric = MetricSpec {
            name: "errors".into(),
            interval: Some(Duration::from_secs(30)),
            ..MetricSpec::default()
        };
        let q = queries(
            &metric,
            Some(&template(
                r#"e{w="{{ workload }}",c=~"{{ args.code }}"}[{{ interval }}]"#,
                None,
            )),
            &vars(),
        )
        .unwrap();
        assert_eq!(
            q,
            Queries {
                canary: r#"e{w="checkout-canary",c=~"5.."}[30s]"#.into(),
                stable: None,
                canary_total: None,
                stable_total: None,
            }
        );
    }

    #[test]
    fn a_two_proportion_metric_resolves_to_four_queries() {
        let metric = MetricSpec {
            name: "errors".into(),
            compare: Some(Comparison {
                method: ComparisonMethod::TwoProportion,
                ..Comparison::default()
            }),
            ..MetricSpec::default()
        };
        let t = template(r#"e{w="{{ workload }}"}"#, Some(r#"t{w="{{ workload }}"}"#));
        let q = queries(&metric, Some(&t), &vars()).unwrap();
        assert_eq!(q.canary, r#"e{w="checkout-canary"}"#);
        assert_eq!(q.stable.as_deref(), Some(r#"e{w="checkout"}"#));
        assert_eq!(q.canary_total.as_deref(), Some(r#"t{w="checkout-canary"}"#));
        assert_eq!(q.stable_total.as_deref(), Some(r#"t{w="checkout"}"#));
    }

    #[test]
    fn a_difference_comparison_from_the_template_adds_the_stable_query() {
        let metric = MetricSpec {
            name: "errors".into(),
            query: Some(r#"e{w="{{ workload }}"}"#.into()),
            ..MetricSpec::default()
        };
        let mut t = template("unused", None);
        t.compare = Some(Comparison {
            method: ComparisonMethod::Difference,
            max_difference: Some(0.01),
            ..Comparison::default()
        });
        let q = queries(&metric, Some(&t), &vars()).unwrap();
        assert_eq!(
            q.canary, r#"e{w="checkout-canary"}"#,
            "the inline query wins"
        );
        assert_eq!(q.stable.as_deref(), Some(r#"e{w="checkout"}"#));
        assert_eq!(q.canary_total, None);
    }

    #[test]
    fn a_count_query_is_rendered_for_every_metric_that_declares_one() {
        let plain = MetricSpec {
            name: "errors".into(),
            ..MetricSpec::default()
        };
        let t = template(r#"e{w="{{ workload }}"}"#, Some(r#"t{w="{{ workload }}"}"#));
        let q = queries(&plain, Some(&t), &vars()).unwrap();
        assert_eq!(q.canary_total.as_deref(), Some(r#"t{w="checkout-canary"}"#));
        assert_eq!(q.stable_total, None, "no comparison: no stable side");
        let compared = MetricSpec {
            compare: Some(Comparison {
                method: ComparisonMethod::Difference,
                max_difference: Some(0.01),
                ..Comparison::default()
            }),
            ..plain
        };
        let q = queries(&compared, Some(&t), &vars()).unwrap();
        assert_eq!(q.stable_total.as_deref(), Some(r#"t{w="checkout"}"#));
    }

    #[test]
    fn the_window_is_the_furthest_back_a_query_reads() {
        let secs = std::time::Duration::from_secs;
        for (query, window) in [
            ("up", secs(0)),
            ("sum(rate(x[30s]))", secs(30)),
            ("sum(rate(x[30s] offset 1m)) / sum(rate(y[2m]))", secs(120)),
            ("rate(x[30s] offset 1m)", secs(90)),
            ("max_over_time(rate(x[1m])[5m:30s])", secs(360)),
            (
                "histogram_quantile(0.99, sum by (le) (rate(b[45s])))",
                secs(45),
            ),
            (
                "(a or vector(0)) and on () (sum(increase(t[10s])) >= 100)",
                secs(10),
            ),
            ("x offset 2m", secs(120)),
        ] {
            assert_eq!(parse_window(query), Ok(window), "{query}");
        }
    }

    #[test]
    fn a_query_that_is_not_promql_is_refused_with_the_parsers_reason() {
        for query in ["sum(rate(x[1m])", "rate(x)", "x{a=}", "sum(x) by", "1 +"] {
            let error = parse_window(query).expect_err(query);
            assert!(!error.reason.is_empty(), "{query}");
        }
    }

    #[test]
    fn two_proportion_without_a_total_query_is_an_error() {
        let metric = MetricSpec {
            name: "errors".into(),
            query: Some(r#"e{w="{{ workload }}"}"#.into()),
            compare: Some(Comparison {
                method: ComparisonMethod::TwoProportion,
                ..Comparison::default()
            }),
            ..MetricSpec::default()
        };
        assert_eq!(
            queries(&metric, None, &vars()),
            Err(RenderQueryError::NoTotalQuery {
                metric: "errors".into()
            })
        );
    }

    #[test]
    fn a_comparison_of_a_query_that_cannot_tell_the_sides_apart_is_an_error() {
        let metric = MetricSpec {
            name: "nginx".into(),
            query: Some(r#"e{canary!=""}"#.into()),
            compare: Some(Comparison {
                method: ComparisonMethod::Ratio,
                max_ratio: Some(1.5),
                ..Comparison::default()
            }),
            ..MetricSpec::default()
        };
        assert_eq!(
            queries(&metric, None, &vars()),
            Err(RenderQueryError::ComparisonWithoutWorkload {
                metric: "nginx".into()
            })
        );
    }

    #[test]
    fn a_metric_without_any_query_is_an_error() {
        let metric = MetricSpec {
            name: "errors".into(),
            ..MetricSpec::default()
        };
        assert_eq!(
            queries(&metric, None, &vars()),
            Err(RenderQueryError::NoQuery {
                metric: "errors".into()
            })
        );
    }
}
