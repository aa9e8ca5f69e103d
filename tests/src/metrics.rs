//! Reading a node's `GET /metrics` (Prometheus text) as a scraper does.

use crate::NodeClient;

/// The node's metrics text.
///
/// # Errors
///
/// When the node does not answer 200 with a body.
pub async fn try_scrape(node: &NodeClient) -> Result<String, String> {
    let resp = node
        .http()
        .get(node.url("/metrics"))
        .send()
        .await
        .map_err(|e| format!("{}: {e}", node.base()))?;
    if resp.status() != 200 {
        return Err(format!(
            "{}: /metrics answered {}",
            node.base(),
            resp.status()
        ));
    }
    resp.text()
        .await
        .map_err(|e| format!("{}: {e}", node.base()))
}

/// The value of the first series of `name` whose labels include every one of `labels`
/// (each written as in the text, e.g. `topic="orders"`).
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split(['{', ' '])
                .next()
                .is_some_and(|series| series == name)
        })
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|number| number.parse().ok())
}
