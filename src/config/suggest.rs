//! Did-you-mean suggestions for unknown keys and sections: the known name within a typo's reach
//! (`prot` -> `port`, `[default]` -> `[DEFAULT]`, `ip_sever2` -> `ip_server2`).

use super::keys::key_names;

/// Optimal-string-alignment distance: like Levenshtein, but a swap of neighbours (`prot`) costs 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Close enough to be a typo: two edits, or one for short names where two edits reach unrelated words.
fn is_close(word: &str, target: &str) -> bool {
    let limit = if target.len() < 5 { 1 } else { 2 };
    edit_distance(&word.to_ascii_lowercase(), &target.to_ascii_lowercase()) <= limit
}

/// The known key closest to `word`, if it is close enough to be a typo of it.
pub(super) fn suggest_key(word: &str) -> Option<String> {
    let stem = word.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() < word.len() && is_close(stem, "ip_server") {
        return Some(format!("ip_server{}", &word[stem.len()..]));
    }
    key_names()
        .map(|name| (edit_distance(&word.to_ascii_lowercase(), name), name))
        .filter(|&(_, name)| is_close(word, name))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, name)| name.to_string())
}

/// The section `name` was probably meant to be.
pub(super) fn suggest_section(name: &str) -> Option<&'static str> {
    if is_close(name, "DEFAULT") || name.eq_ignore_ascii_case("default") {
        Some("DEFAULT")
    } else if name.starts_with("route") || name.starts_with("routes.") {
        Some("route.NAME")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest_key("prot").as_deref(), Some("port"));
        assert_eq!(suggest_key("Port").as_deref(), Some("port"));
        assert_eq!(suggest_key("max_con").as_deref(), Some("max_conn"));
        assert_eq!(suggest_key("ip_sever2").as_deref(), Some("ip_server2"));
        assert_eq!(suggest_key("url"), None);
        assert_eq!(suggest_key("completely_different"), None);
        assert_eq!(suggest_section("default"), Some("DEFAULT"));
        assert_eq!(suggest_section("DEFALT"), Some("DEFAULT"));
        assert_eq!(suggest_section("routes"), Some("route.NAME"));
        assert_eq!(suggest_section("users"), None);
    }
}
