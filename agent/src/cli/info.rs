//! `version` and `info`.

use anyhow::Result;
use bosun_cri::CriClient;

use super::output;
use super::InfoArgs;

/// bosun's own version, then the runtime's as crictl prints them. As with every command, a
/// runtime that does not answer leaves stdout empty and says so in one line on stderr;
/// `bosun --version` needs no runtime.
pub async fn version(client: &CriClient) -> Result<()> {
    let v = client.query_version().await?;
    output::print_stdout(&format!(
        "bosun {}\nVersion:  {}\nRuntimeName:  {}\nRuntimeVersion:  {}\nRuntimeApiVersion:  {}\n",
        bosun::VERSION,
        v.version,
        v.runtime_name,
        v.runtime_version,
        v.runtime_api_version
    ))
}

pub async fn info(client: &CriClient, args: &InfoArgs) -> Result<()> {
    let response = client.status(true).await?;
    // As crictl shows it: the runtime's conditions under "status", then its info map.
    let mut value = match output::info_map(&response.info) {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    if let Some(status) = &response.status {
        value.insert("status".to_owned(), output::proto_json(status)?);
    }
    output::print_value(&serde_json::Value::Object(value), args.output)
}
