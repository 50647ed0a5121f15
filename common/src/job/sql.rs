//! `query: {sql: ...}`: a windowed aggregate written in SQL, compiled to the same query as the
//! YAML form (`window`, `group_by`, `aggregates`, `output_mode`). Spark's form is accepted:
//! `GROUP BY window(ts, '5 minutes'[, slide[, start]]), keys`, with the aggregates selected
//! under a name (`count(*) AS event_count`), `FROM source` (or the topic's name), and an
//! optional trailing `EMIT ON WINDOW CLOSE` (append) or `EMIT ON UPDATE` (update). Flink's and
//! RisingWave's window table functions are too: `FROM TABLE(TUMBLE(TABLE source,
//! DESCRIPTOR(ts), INTERVAL '5' MINUTES))` (or `HOP(..., slide, size)`) with `GROUP BY
//! window_start, window_end, keys`. A construct outside that is refused with its line and
//! column and what is supported.

use indexmap::IndexMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_expressions_mut, DateTimeField, DuplicateTreatment, Expr, FunctionArg,
    FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectName, ObjectNamePart, SelectItem,
    SetExpr, Spanned, Statement, TableFactor, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Span;

use super::rows::Placed;
use super::RawWindow;

/// What the SQL of a query compiles to: the YAML form's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledSql {
    pub window: RawWindow,
    pub group_by: Vec<String>,
    pub aggregates: IndexMap<String, String>,
    /// From `EMIT ON ...`, when given.
    pub output_mode: Option<String>,
    /// `WHERE`, over the source's columns.
    pub filter: Option<Placed>,
    /// Columns computed from the source's before the aggregate: group keys and aggregate
    /// arguments that are expressions, by the name the aggregate reads them by.
    pub computed: Vec<(String, Placed)>,
    /// `HAVING`, over the output's columns.
    pub having: Option<Placed>,
}

const SUPPORTED: &str = "supported: SELECT [window,] keys, aggregates AS names FROM source \
    [WHERE condition] GROUP BY window(time_column, 'size'[, 'slide'[, 'start']]), keys \
    [HAVING condition]; or SELECT window_start, window_end, keys, aggregates AS names FROM \
    TABLE(TUMBLE(TABLE source, DESCRIPTOR(time_column), INTERVAL '5' MINUTES)) (or HOP(..., \
    slide, size)) GROUP BY window_start, window_end, keys; [EMIT ON WINDOW CLOSE | EMIT ON \
    UPDATE]; a key is a column or an expression selected under a name; aggregates are \
    count(*), count(x), count(DISTINCT x), approx_count_distinct(x[, rsd]), sum, min, max and \
    avg of a column or an expression; joins, OVER and aggregations without a window are not \
    supported";

/// The watermark of a Flink `CREATE TABLE <source> (..., WATERMARK FOR ts AS ts - INTERVAL
/// '10' MINUTE)` statement before the query, when there is one, as (column, delay).
pub fn create_table_watermark(sql: &str) -> Result<Option<(String, String)>, String> {
    Ok(create_table(sql)?.and_then(|t| t.watermark))
}

/// A `CREATE TABLE` statement before the query: its table, its watermark, and the SQL with the
/// statement blanked out (spaces, newlines kept, so lines and columns stay where they were).
struct CreateTable {
    table: String,
    watermark: Option<(String, String)>,
    rest: String,
}

fn create_table(sql: &str) -> Result<Option<CreateTable>, String> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let trimmed = sql.trim_start();
    if !trimmed
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("create"))
    {
        return Ok(None);
    }
    let start = sql.len() - trimmed.len();
    // The statement ends at the first `;` outside quotes.
    let mut quote = None;
    let mut end = None;
    for (i, c) in sql[start..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, ';') => {
                end = Some(start + i + 1);
                break;
            }
            _ => {}
        }
    }
    let end = end.ok_or("the CREATE TABLE statement must end with `;` before the query")?;
    let tokens = Tokenizer::new(&GenericDialect {}, &sql[start..end])
        .tokenize()
        .map_err(|e| e.to_string())?;
    let tokens: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let word = |i: usize| match tokens.get(i) {
        Some(Token::Word(w)) => Some(w.value.clone()),
        _ => None,
    };
    let is = |i: usize, keyword: &str| word(i).is_some_and(|w| w.eq_ignore_ascii_case(keyword));
    if !(is(0, "create") && is(1, "table")) {
        return Err("expected CREATE TABLE <source> (...) before the query".into());
    }
    let mut at = 2;
    if is(2, "if") && is(3, "not") && is(4, "exists") {
        at = 5;
    }
    let table = word(at).ok_or("expected the source's name after CREATE TABLE")?;
    let mut watermark = None;
    if let Some(w) = (at..tokens.len()).find(|&i| is(i, "watermark") && is(i + 1, "for")) {
        let column =
            word(w + 2).ok_or("expected WATERMARK FOR <column> AS <column> - INTERVAL ...")?;
        let shape = is(w + 3, "as")
            && word(w + 4).is_some_and(|c| c == column)
            && matches!(tokens.get(w + 5), Some(Token::Minus))
            && is(w + 6, "interval");
        let amount = match tokens.get(w + 7) {
            Some(Token::SingleQuotedString(text)) if shape => text.clone(),
            _ => {
                return Err(format!(
                    "expected WATERMARK FOR {column} AS {column} - INTERVAL '10' MINUTE"
                ))
            }
        };
        let text = match word(w + 8) {
            Some(unit) if !unit.eq_ignore_ascii_case("with") => format!("{amount} {unit}"),
            _ => amount,
        };
        watermark = Some((column, spark_interval(&text)?));
    }
    let rest: String = sql
        .char_indices()
        .map(|(i, c)| match (start..end).contains(&i) && c != '\n' {
            true => ' ',
            false => c,
        })
        .collect();
    Ok(Some(CreateTable {
        table,
        watermark,
        rest,
    }))
}

/// Compiles `sql`, read from source `sources` (the names the query may read it by).
pub fn compile(sql: &str, sources: &[&str]) -> Result<CompiledSql, String> {
    let created = create_table(sql)?;
    if let Some(t) = &created {
        check_source(
            &ObjectName::from(vec![sqlparser::ast::Ident::new(&t.table)]),
            sources,
        )?;
    }
    let sql = created.as_ref().map_or(sql, |t| t.rest.as_str());
    let (sql, output_mode) = strip_emit(sql);
    let sql = without_table_keyword_in_tvfs(sql);
    let statements = Parser::parse_sql(&GenericDialect {}, &sql).map_err(|e| e.to_string())?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return Err(format!("expected one SELECT statement; {SUPPORTED}"));
    };
    let refuse =
        |what: &str, span: Span| Err(format!("{}{what} is not supported; {SUPPORTED}", at(span)));
    if let Some(with) = &query.with {
        return refuse("WITH", with.span());
    }
    if let Some(order) = &query.order_by {
        return refuse("ORDER BY", order.span());
    }
    if let Some(limit) = &query.limit_clause {
        return refuse("LIMIT", limit.span());
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return refuse("a query other than one SELECT", query.body.span());
    };
    if select.distinct.is_some() {
        return refuse("SELECT DISTINCT", select.span());
    }
    if !select.named_window.is_empty() || select.qualify.is_some() {
        return refuse("WINDOW or QUALIFY", select.span());
    }
    // A window table function in FROM gives the window; `window(...)` in GROUP BY otherwise.
    let mut window = None;
    match select.from.as_slice() {
        [from] if from.joins.is_empty() => match &from.relation {
            TableFactor::Table {
                name, args: None, ..
            } => check_source(name, sources)?,
            TableFactor::TableFunction { expr, alias: None } => {
                window = Some(table_function(expr, sources)?);
            }
            other => return refuse("this FROM", other.span()),
        },
        [from] => return refuse("a join", from.span()),
        _ => return refuse("reading other than one source", select.span()),
    }
    let filter = match &select.selection {
        Some(condition) => {
            if let Some(span) = first_aggregate(condition) {
                return Err(format!(
                    "{}an aggregate in WHERE: WHERE filters the source's rows; a condition on \
                     aggregates goes in HAVING",
                    at(span)
                ));
            }
            Some(placed(condition))
        }
        None => None,
    };

    let mut items = Vec::with_capacity(select.projection.len());
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => items.push((e, None)),
            SelectItem::ExprWithAlias { expr, alias } => items.push((expr, Some(alias))),
            other => return refuse("this select item", other.span()),
        }
    }

    let GroupByExpr::Expressions(groups, modifiers) = &select.group_by else {
        return refuse("GROUP BY ALL", select.span());
    };
    if !modifiers.is_empty() {
        return refuse("GROUP BY modifiers", select.span());
    }
    let tvf = window.is_some();
    let mut bounds = 0;
    let mut keys: Vec<String> = Vec::new();
    let mut computed: Vec<(String, Placed)> = Vec::new();
    for group in groups {
        match group {
            Expr::Identifier(ident) if tvf && is_window_bound(&ident.value) => bounds += 1,
            Expr::Function(f) if object_name(&f.name).eq_ignore_ascii_case("window") => {
                if window.is_some() || tvf {
                    return refuse("a second window", group.span());
                }
                window = Some(spark_window(f, group.span())?);
            }
            // A selected expression's alias (Spark's group-by alias), or a source column.
            Expr::Identifier(ident) => {
                let aliased = items.iter().find(|(e, alias)| {
                    alias.is_some_and(|a| a.value == ident.value)
                        && !matches!(e, Expr::Identifier(i) if i.value == ident.value)
                });
                if let Some((expr, _)) = aliased {
                    if let Some(span) = first_aggregate(expr) {
                        return Err(format!(
                            "{}`{}` is an aggregate: it cannot be grouped by",
                            at(span),
                            ident.value
                        ));
                    }
                    computed.push((ident.value.clone(), placed(expr)));
                }
                keys.push(ident.value.clone());
            }
            other => {
                if let Some(span) = first_aggregate(other) {
                    return refuse("an aggregate in GROUP BY", span);
                }
                let text = other.to_string().to_lowercase();
                let Some((expr, Some(alias))) = items
                    .iter()
                    .find(|(e, a)| a.is_some() && e.to_string().to_lowercase() == text)
                else {
                    return Err(format!(
                        "{}select `{other}` under a name (`{other} AS name`) to group by it",
                        at(other.span())
                    ));
                };
                computed.push((alias.value.clone(), placed(expr)));
                keys.push(alias.value.clone());
            }
        }
    }
    if tvf && bounds != 2 {
        return Err(format!(
            "{}a window table function's rows are grouped by window_start and window_end; \
             {SUPPORTED}",
            at(select.span())
        ));
    }
    let Some(window) = window else {
        return Err(format!(
            "{}a streaming aggregate needs GROUP BY window(...) (a non-windowed aggregation would \
             keep its state forever); {SUPPORTED}",
            at(select.span())
        ));
    };

    let mut selected_keys = Vec::new();
    let mut aggregates = IndexMap::new();
    // Each aggregate's call as written (lowercase), for HAVING to name it by.
    let mut calls: Vec<(String, String)> = Vec::new();
    for (expr, alias) in &items {
        let alias = alias.map(|a| a.value.clone());
        // A group key computed from an expression, selected under its name.
        let computed_key = alias.as_ref().is_some_and(|a| {
            computed
                .iter()
                .any(|(n, p)| n == a && p.expr.to_string() == expr.to_string())
        });
        match expr {
            _ if computed_key => selected_keys.extend(alias),
            Expr::Identifier(ident) if ident.value.eq_ignore_ascii_case("window") && !tvf => {}
            Expr::Identifier(ident) if tvf && is_window_bound(&ident.value) => {}
            Expr::Identifier(ident) => {
                if !keys.contains(&ident.value) {
                    return Err(format!(
                        "{}`{}` is selected but neither grouped by nor aggregated",
                        at(ident.span),
                        ident.value
                    ));
                }
                if alias.as_ref().is_some_and(|a| *a != ident.value) {
                    return refuse("renaming a group key", expr.span());
                }
                selected_keys.push(ident.value.clone());
            }
            Expr::Function(f) if is_aggregate(f) => {
                let Some(name) = alias else {
                    return Err(format!(
                        "{}name the aggregate: `{expr} AS name`",
                        at(expr.span())
                    ));
                };
                if aggregates.contains_key(&name) || keys.contains(&name) {
                    return Err(format!("{}`{name}` is selected twice", at(expr.span())));
                }
                let call = aggregate(f, expr.span(), &name, &mut computed)?;
                calls.push((expr.to_string().to_lowercase(), name.clone()));
                aggregates.insert(name, call);
            }
            _ if first_aggregate(expr).is_some() => {
                return refuse(
                    "an expression over aggregates (select the aggregates and compute it \
                     downstream)",
                    expr.span(),
                )
            }
            _ => {
                return Err(format!(
                    "{}`{expr}` is selected but neither grouped by nor aggregated",
                    at(expr.span())
                ))
            }
        }
    }
    let having = match &select.having {
        Some(condition) => Some(having(condition, &calls)?),
        None => None,
    };
    // The output's group keys: those selected, in their order, then the others grouped by.
    let mut group_by = selected_keys;
    for key in keys {
        if !group_by.contains(&key) {
            group_by.push(key);
        }
    }
    Ok(CompiledSql {
        window,
        group_by,
        aggregates,
        output_mode,
        filter,
        computed,
        having,
    })
}

/// `HAVING condition` over the output's columns: each aggregate call in it is the selected
/// aggregate's column (`count(*) > 10` reads `event_count`).
fn having(condition: &Expr, calls: &[(String, String)]) -> Result<Placed, String> {
    let mut rewritten = condition.clone();
    let flow = visit_expressions_mut(&mut rewritten, |e| {
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        if !is_aggregate(f) {
            return ControlFlow::Continue(());
        }
        let call = e.to_string().to_lowercase();
        match calls.iter().find(|(c, _)| *c == call) {
            Some((_, name)) => {
                *e = Expr::Identifier(Ident::new(name));
                ControlFlow::Continue(())
            }
            None => ControlFlow::Break(format!(
                "{}HAVING reads `{e}`, which is not selected: select it under a name",
                at(e.span())
            )),
        }
    });
    if let ControlFlow::Break(err) = flow {
        return Err(err);
    }
    Ok(Placed {
        expr: rewritten,
        at: at(condition.span()),
    })
}

/// The place of the first aggregate call in `expr`, if it has one.
fn first_aggregate(expr: &Expr) -> Option<Span> {
    let mut found = None;
    let _ = visit_expressions(expr, |e| match e {
        Expr::Function(f) if is_aggregate(f) => {
            found = Some(e.span());
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    found
}

/// An aggregate function's call (any other call is a row expression).
fn is_aggregate(f: &sqlparser::ast::Function) -> bool {
    const AGGREGATES: [&str; 6] = ["count", "approx_count_distinct", "sum", "min", "max", "avg"];
    let name = object_name(&f.name);
    AGGREGATES.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

fn placed(expr: &Expr) -> Placed {
    Placed {
        expr: expr.clone(),
        at: at(expr.span()),
    }
}

/// `window_start` or `window_end`: a window table function's columns.
fn is_window_bound(column: &str) -> bool {
    column.eq_ignore_ascii_case("window_start") || column.eq_ignore_ascii_case("window_end")
}

/// Refuses a FROM that names neither `source` nor the topic.
fn check_source(name: &ObjectName, sources: &[&str]) -> Result<(), String> {
    let table = object_name(name);
    if sources.iter().any(|s| *s == table) {
        return Ok(());
    }
    Err(format!(
        "{}FROM `{table}`: the query reads its source as {}",
        at(name.span()),
        sources
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(" or ")
    ))
}

/// The window of `TUMBLE(source, DESCRIPTOR(ts), size)` or `HOP(source, DESCRIPTOR(ts), slide,
/// size)` (the `TABLE` before the source taken out by [`without_table_keyword_in_tvfs`]).
fn table_function(expr: &Expr, sources: &[&str]) -> Result<RawWindow, String> {
    let span = expr.span();
    let Expr::Function(f) = expr else {
        return Err(format!(
            "{}expected TUMBLE(...) or HOP(...); {SUPPORTED}",
            at(span)
        ));
    };
    let name = object_name(&f.name).to_ascii_uppercase();
    let args = plain_args(f, span)?;
    let (source, column, durations) = match args.as_slice() {
        [Expr::Identifier(source), Expr::Function(descriptor), rest @ ..]
            if object_name(&descriptor.name).eq_ignore_ascii_case("descriptor") =>
        {
            let column = match plain_args(descriptor, descriptor.span())?.as_slice() {
                [Expr::Identifier(c)] => c.value.clone(),
                _ => {
                    return Err(format!(
                        "{}expected DESCRIPTOR(time_column)",
                        at(descriptor.span())
                    ))
                }
            };
            (source, column, rest)
        }
        _ => {
            return Err(format!(
                "{}expected {name}(TABLE source, DESCRIPTOR(time_column), INTERVAL ...)",
                at(span)
            ))
        }
    };
    check_source(&ObjectName::from(vec![source.clone()]), sources)?;
    let durations = durations
        .iter()
        .map(interval)
        .collect::<Result<Vec<_>, _>>()?;
    match (name.as_str(), durations.as_slice()) {
        ("TUMBLE", [size]) => Ok(RawWindow {
            column,
            size: size.clone(),
            slide: None,
            start: None,
        }),
        ("HOP", [slide, size]) => Ok(RawWindow {
            column,
            size: size.clone(),
            slide: Some(slide.clone()),
            start: None,
        }),
        ("TUMBLE" | "HOP", _) => Err(format!(
            "{}expected TUMBLE(..., size) or HOP(..., slide, size)",
            at(span)
        )),
        _ => Err(format!(
            "{}`{name}` is not a window table function; {SUPPORTED}",
            at(span)
        )),
    }
}

/// `INTERVAL '5' MINUTES` (or `INTERVAL '5 minutes'`) as a duration the job file reads.
fn interval(expr: &Expr) -> Result<String, String> {
    let Expr::Interval(i) = expr else {
        return Err(format!("{}expected an INTERVAL", at(expr.span())));
    };
    let text = match i.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(t) | Value::Number(t, _) => t.clone(),
            _ => return Err(format!("{}expected INTERVAL '5' MINUTES", at(expr.span()))),
        },
        other => return Err(format!("{}expected INTERVAL '5' MINUTES", at(other.span()))),
    };
    let unit = match &i.leading_field {
        None => return spark_interval(&text).map_err(|m| format!("{}{m}", at(expr.span()))),
        Some(DateTimeField::Millisecond | DateTimeField::Milliseconds) => "milliseconds",
        Some(DateTimeField::Second | DateTimeField::Seconds) => "seconds",
        Some(DateTimeField::Minute | DateTimeField::Minutes) => "minutes",
        Some(DateTimeField::Hour | DateTimeField::Hours) => "hours",
        Some(DateTimeField::Day | DateTimeField::Days) => "days",
        Some(other) => {
            return Err(format!(
                "{}INTERVAL in {other} is not supported",
                at(expr.span())
            ))
        }
    };
    spark_interval(&format!("{text} {unit}")).map_err(|m| format!("{}{m}", at(expr.span())))
}

/// `sql` with the `TABLE` keyword before a window table function's source blanked out
/// (`TUMBLE(TABLE source, ...)`: sqlparser takes no table as an argument), the same length of
/// spaces so that lines and columns stay where they were. Quoted text is left alone.
fn without_table_keyword_in_tvfs(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = sql.to_string().into_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if matches!(c, b'\'' | b'"' | b'`') {
            quote = Some(c);
            i += 1;
            continue;
        }
        for function in ["TUMBLE", "HOP"] {
            let end = i + function.len();
            let starts_word =
                i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            if starts_word && bytes.len() > end && sql[i..end].eq_ignore_ascii_case(function) {
                let mut j = end;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if bytes.get(j) != Some(&b'(') {
                    continue;
                }
                j += 1;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                let after = j + 5;
                if bytes.len() > after
                    && sql[j..after].eq_ignore_ascii_case("TABLE")
                    && bytes[after].is_ascii_whitespace()
                {
                    out[j..after].fill(b' ');
                }
            }
        }
        i += 1;
    }
    // Only ASCII bytes were replaced by ASCII spaces.
    String::from_utf8(out).unwrap_or_else(|_| sql.to_string())
}

/// `sql` without a trailing `EMIT ON WINDOW CLOSE` / `EMIT ON UPDATE`, and the output mode it
/// selects.
fn strip_emit(sql: &str) -> (&str, Option<String>) {
    let trimmed = sql.trim_end().trim_end_matches(';').trim_end();
    let upper = trimmed.to_ascii_uppercase();
    for (clause, mode) in [
        ("EMIT ON WINDOW CLOSE", "append"),
        ("EMIT ON UPDATE", "update"),
    ] {
        if let Some(head) = upper.strip_suffix(clause) {
            if head.ends_with(char::is_whitespace) {
                return (&trimmed[..head.len()], Some(mode.to_string()));
            }
        }
    }
    (sql, None)
}

/// `window(time, 'size'[, 'slide'[, 'start']])`.
fn spark_window(f: &sqlparser::ast::Function, span: Span) -> Result<RawWindow, String> {
    let args = plain_args(f, span)?;
    let (column, rest) = match args.as_slice() {
        [Expr::Identifier(column), rest @ ..] if (1..=3).contains(&rest.len()) => {
            (column.value.clone(), rest)
        }
        _ => {
            return Err(format!(
                "{}expected window(time_column, 'size'[, 'slide'[, 'start']])",
                at(span)
            ))
        }
    };
    let mut durations = Vec::new();
    for arg in rest {
        match arg {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(text) => {
                    durations.push(spark_interval(text).map_err(|m| format!("{}{m}", at(v.span)))?)
                }
                _ => {
                    return Err(format!(
                        "{}expected a duration such as '5 minutes'",
                        at(v.span)
                    ))
                }
            },
            other => {
                return Err(format!(
                    "{}expected a duration such as '5 minutes'",
                    at(other.span())
                ))
            }
        }
    }
    let mut durations = durations.into_iter();
    Ok(RawWindow {
        column,
        size: durations.next().unwrap_or_default(),
        slide: durations.next(),
        start: durations.next(),
    })
}

/// Spark's interval text (`5 minutes`, `1 hour 30 minutes`, `10 seconds`) as a duration the job
/// file reads (`5m`, `1h30m`, `10s`).
fn spark_interval(text: &str) -> Result<String, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return Err(format!("`{text}`: expected a duration such as '5 minutes'"));
    }
    let mut out = String::new();
    for pair in words.chunks(2) {
        let number: u64 = pair[0]
            .parse()
            .map_err(|_| format!("`{text}`: `{}` is not a whole number", pair[0]))?;
        let unit = match pair[1].to_ascii_lowercase().trim_end_matches('s') {
            "millisecond" => "ms",
            "second" => "s",
            "minute" => "m",
            "hour" => "h",
            "day" => "d",
            other => {
                return Err(format!(
                "`{text}`: unknown unit `{other}` (milliseconds, seconds, minutes, hours or days)"
            ))
            }
        };
        out.push_str(&format!("{number}{unit}"));
    }
    Ok(out)
}

/// An aggregate call as the YAML form writes it (`count(distinct user_id)`); an argument that
/// is an expression becomes a column computed before the aggregate (`<name>__input`), added to
/// `computed`.
fn aggregate(
    f: &sqlparser::ast::Function,
    span: Span,
    name: &str,
    computed: &mut Vec<(String, Placed)>,
) -> Result<String, String> {
    if f.over.is_some() {
        return Err(format!("{}OVER is not supported; {SUPPORTED}", at(span)));
    }
    if f.filter.is_some() {
        return Err(format!("{}FILTER is not supported; {SUPPORTED}", at(span)));
    }
    let function = object_name(&f.name).to_ascii_lowercase();
    let FunctionArguments::List(list) = &f.args else {
        return Err(format!("{}expected {function}(...)", at(span)));
    };
    let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
    if !list.clauses.is_empty() {
        return Err(format!(
            "{}clauses inside {function}(...) are not supported",
            at(span)
        ));
    }
    let mut args = Vec::new();
    for (i, arg) in list.args.iter().enumerate() {
        match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => args.push("*".to_string()),
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(ident))) => {
                args.push(ident.value.clone())
            }
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) if i > 0 => {
                match &v.value {
                    Value::Number(n, _) => args.push(n.clone()),
                    _ => return Err(format!("{}expected a number", at(v.span))),
                }
            }
            // The first argument may be any row expression: the column it computes is read.
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) if i == 0 => {
                if let Some(inner) = first_aggregate(e) {
                    return Err(format!("{}an aggregate inside an aggregate", at(inner)));
                }
                let column = format!("{name}__input");
                computed.push((column.clone(), placed(e)));
                args.push(column);
            }
            other => {
                return Err(format!(
                    "{}expected a column or an expression, then constant arguments",
                    at(other.span())
                ))
            }
        }
    }
    let distinct = if distinct { "distinct " } else { "" };
    Ok(format!("{function}({distinct}{})", args.join(", ")))
}

/// The arguments of a call, each a plain expression.
fn plain_args(f: &sqlparser::ast::Function, span: Span) -> Result<Vec<Expr>, String> {
    let FunctionArguments::List(list) = &f.args else {
        return Err(format!("{}expected arguments", at(span)));
    };
    list.args
        .iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
            other => Err(format!("{}expected an expression", at(other.span()))),
        })
        .collect()
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident.value.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// `line L column C: ` of a span, when the parser recorded one.
fn at(span: Span) -> String {
    match span.start.line {
        0 => String::new(),
        line => format!("line {line} column {}: ", span.start.column),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "SELECT window, event_type, count(*) AS event_count,
       count(DISTINCT user_id) AS unique_users,
       approx_count_distinct(event_id) AS approx_unique
FROM source
GROUP BY window(timestamp, '5 minutes'), event_type";

    #[test]
    fn the_seed_query_compiles_to_the_yaml_forms_fields() {
        let compiled = compile(SEED, &["source", "web-events"]).unwrap();
        assert_eq!(compiled.window.column, "timestamp");
        assert_eq!(compiled.window.size, "5m");
        assert_eq!(compiled.window.slide, None);
        assert_eq!(compiled.group_by, ["event_type"]);
        let aggregates: Vec<(&str, &str)> = compiled
            .aggregates
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            aggregates,
            [
                ("event_count", "count(*)"),
                ("unique_users", "count(distinct user_id)"),
                ("approx_unique", "approx_count_distinct(event_id)")
            ]
        );
        assert_eq!(compiled.output_mode, None);
        // The topic's name, sliding windows, a start, and an emit clause.
        let sliding = compile(
            "SELECT count(*) AS n FROM \"web-events\" GROUP BY window(ts, '10 minutes', '5 minutes', '1 minute') EMIT ON UPDATE;",
            &["source", "web-events"],
        )
        .unwrap();
        assert_eq!(
            (
                sliding.window.size.as_str(),
                sliding.window.slide.as_deref(),
                sliding.window.start.as_deref()
            ),
            ("10m", Some("5m"), Some("1m"))
        );
        assert_eq!(sliding.output_mode.as_deref(), Some("update"));
    }

    /// Flink's `CREATE TABLE` gives the watermark; the statement is cut out of the query,
    /// which keeps its lines and columns.
    #[test]
    fn a_create_table_watermark_is_read_and_the_query_compiles() {
        let sql = format!(
            "CREATE TABLE source (\n  ts TIMESTAMP(3),\n  WATERMARK FOR ts AS ts - INTERVAL '10' MINUTE\n) WITH ('connector' = 'kafka');\n{SEED}"
        );
        assert_eq!(
            create_table_watermark(&sql).unwrap(),
            Some(("ts".to_string(), "10m".to_string()))
        );
        assert_eq!(
            compile(&sql, &["source"]).unwrap(),
            compile(SEED, &["source"]).unwrap()
        );
        let err = compile(
            &sql.replace("FROM source", "FROM source WHERE count(*) > 1"),
            &["source"],
        )
        .unwrap_err();
        assert!(
            err.starts_with("line 8 column 19: an aggregate in WHERE"),
            "{err}"
        );
        assert!(
            compile(&sql.replace("TABLE source", "TABLE clicks"), &["source"])
                .unwrap_err()
                .contains("FROM `clicks`")
        );
        assert_eq!(create_table_watermark(SEED).unwrap(), None);
    }

    /// Flink's and RisingWave's window table functions compile to the same fields as Spark's
    /// `window()`.
    #[test]
    fn window_table_functions_compile_like_sparks_window() {
        let tumble = compile(
            "SELECT window_start, window_end, event_type, count(*) AS event_count,
       count(DISTINCT user_id) AS unique_users,
       approx_count_distinct(event_id) AS approx_unique
FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(timestamp), INTERVAL '5' MINUTES))
GROUP BY window_start, window_end, event_type",
            &["source"],
        )
        .unwrap();
        assert_eq!(tumble, compile(SEED, &["source"]).unwrap());
        let hop = compile(
            "select window_start, window_end, count(*) as n from table(hop(table \"web-events\", descriptor(ts), interval '1' minute, interval '5' minutes)) group by window_start, window_end emit on update",
            &["source", "web-events"],
        )
        .unwrap();
        assert_eq!(
            (hop.window.size.as_str(), hop.window.slide.as_deref()),
            ("5m", Some("1m"))
        );
        assert_eq!(hop.output_mode.as_deref(), Some("update"));
        // `TABLE` in a quoted string is not the keyword.
        assert_eq!(
            without_table_keyword_in_tvfs("SELECT 'TUMBLE(TABLE x' FROM TABLE(TUMBLE(TABLE s, d))"),
            "SELECT 'TUMBLE(TABLE x' FROM TABLE(TUMBLE(      s, d))"
        );
        let err = compile(
            "SELECT window_start, count(*) AS n FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '5' MINUTES)) GROUP BY window_start",
            &["source"],
        )
        .unwrap_err();
        assert!(
            err.contains("grouped by window_start and window_end"),
            "{err}"
        );
    }

    /// WHERE, keys computed from expressions (by their alias or by the expression itself),
    /// an aggregate over an expression, and HAVING over the aggregates' columns.
    #[test]
    fn row_expressions_compile_to_computed_columns_a_filter_and_having() {
        let compiled = compile(
            "SELECT window,
       CASE WHEN event_type IN ('click', 'tap') THEN 'touch' ELSE event_type END AS kind,
       upper(properties['device']) AS device,
       count(*) AS events,
       sum(CAST(properties['amount'] AS DOUBLE)) AS amount
FROM source
WHERE user_id IS NOT NULL AND page_url LIKE '/shop%'
GROUP BY window(timestamp, '5 minutes'), kind, upper(properties['device'])
HAVING COUNT(*) > 1 AND amount > 0",
            &["source"],
        )
        .unwrap();
        assert_eq!(compiled.group_by, ["kind", "device"]);
        let computed: Vec<(&str, String)> = compiled
            .computed
            .iter()
            .map(|(name, p)| (name.as_str(), p.expr.to_string()))
            .collect();
        assert_eq!(
            computed,
            [
                (
                    "kind",
                    "CASE WHEN event_type IN ('click', 'tap') THEN 'touch' ELSE event_type END"
                        .to_string()
                ),
                ("device", "upper(properties['device'])".to_string()),
                (
                    "amount__input",
                    "CAST(properties['amount'] AS DOUBLE)".to_string()
                ),
            ]
        );
        assert_eq!(compiled.aggregates["amount"], "sum(amount__input)");
        assert_eq!(
            compiled.filter.map(|p| p.expr.to_string()).as_deref(),
            Some("user_id IS NOT NULL AND page_url LIKE '/shop%'")
        );
        let having = compiled.having.unwrap();
        assert_eq!(having.expr.to_string(), "events > 1 AND amount > 0");
        assert_eq!(having.at, "line 9 column 8: ");
    }

    #[test]
    fn unsupported_constructs_are_refused_with_their_place() {
        let cases = [
            (
                SEED.replace("FROM source", "FROM source WHERE count(*) > 1"),
                "line 4 column 19: an aggregate in WHERE",
            ),
            (
                SEED.replace("count(*) AS event_count", "count(*) * 2 AS event_count"),
                "an expression over aggregates",
            ),
            (
                SEED.replace("FROM source", "FROM source GROUP BY upper(page_url)")
                    .replace("GROUP BY window", ", window"),
                "select `upper(page_url)` under a name",
            ),
            (
                format!("{SEED} HAVING count(user_id) > 1"),
                "HAVING reads `count(user_id)`, which is not selected",
            ),
            (
                SEED.replace("event_type\n", "count(*)\n")
                    .replace("), event_type", "), count(*)"),
                "an aggregate in GROUP BY",
            ),
            (
                SEED.replace("FROM source", "FROM source JOIN users ON true"),
                "a join is not supported",
            ),
            (
                SEED.replace("count(*) AS event_count", "count(*) OVER () AS event_count"),
                "OVER is not supported",
            ),
            (
                SEED.replace(
                    "GROUP BY window(timestamp, '5 minutes'), event_type",
                    "GROUP BY event_type",
                ),
                "needs GROUP BY window(...)",
            ),
            (SEED.replace("FROM source", "FROM clicks"), "FROM `clicks`"),
            (
                SEED.replace("count(*) AS event_count", "count(*)"),
                "name the aggregate",
            ),
            (
                SEED.replace("'5 minutes'", "'5 fortnights'"),
                "unknown unit `fortnight`",
            ),
            (
                SEED.replace("SELECT window,", "SELECT window, user_id,"),
                "`user_id` is selected but neither grouped by nor aggregated",
            ),
        ];
        for (sql, expected) in cases {
            let err = compile(&sql, &["source"]).expect_err(&sql);
            assert!(err.contains(expected), "`{expected}` not in `{err}`");
            if !err.starts_with("sql parser error") {
                assert!(err.contains("supported") || err.contains("line"), "{err}");
            }
        }
    }
}
