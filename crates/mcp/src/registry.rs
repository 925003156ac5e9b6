//! The tool registry: each tool is a name, a description, the JSON schemas
//! of its typed arguments and result, and a blocking handler. Adding a
//! tool is one [`ToolRegistry::add`] call (other crates' tools, e.g. the
//! desktop's, register the same way).

use rmcp::handler::server::common::{schema_for_output, schema_for_type};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cancel::Cancel;
use crate::error::ToolError;

/// A result's text rendering, for clients that show text rather than
/// structured content.
pub trait Render {
    fn render(&self) -> String;
    /// The result's content blocks: its text rendering, unless a result
    /// has more to show (a screenshot is an image block).
    fn content(&self) -> Vec<ContentBlock> {
        vec![ContentBlock::text(self.render())]
    }
}

type Handler<C> = Box<dyn Fn(&C, JsonObject, &Cancel) -> CallToolResult + Send + Sync>;

/// Tools by name, with handlers taking a context `C`.
pub struct ToolRegistry<C> {
    entries: Vec<(Tool, Handler<C>)>,
}

impl<C> std::fmt::Debug for ToolRegistry<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.entries.iter().map(|(t, _)| &t.name).collect();
        f.debug_struct("ToolRegistry")
            .field("tools", &names)
            .finish()
    }
}

impl<C> Default for ToolRegistry<C> {
    fn default() -> Self {
        ToolRegistry {
            entries: Vec::new(),
        }
    }
}

impl<C: 'static> ToolRegistry<C> {
    /// Registers tool `name`: arguments `A` (their schema is the input
    /// schema; arguments that do not fit it are a tool error), result `O`
    /// (structured content, with `O`'s schema as the output schema, and its
    /// text rendering).
    pub fn add<A, O>(
        &mut self,
        name: &'static str,
        description: &'static str,
        handler: fn(&C, A, &Cancel) -> Result<O, ToolError>,
    ) -> &mut Self
    where
        A: DeserializeOwned + JsonSchema + 'static,
        O: Serialize + JsonSchema + Render + 'static,
    {
        let tool = Tool::new(name, description, schema_for_type::<A>())
            .with_raw_output_schema(schema_for_output::<O>());
        let run = move |ctx: &C, args: JsonObject, cancel: &Cancel| {
            let result = parse_args::<A>(name, args).and_then(|a| handler(ctx, a, cancel));
            tool_result(result)
        };
        self.entries.retain(|(t, _)| t.name != name);
        self.entries.push((tool, Box::new(run)));
        self
    }

    /// Every tool, in the order registered.
    pub fn tools(&self) -> Vec<Tool> {
        self.entries.iter().map(|(t, _)| t.clone()).collect()
    }

    pub fn tool(&self, name: &str) -> Option<Tool> {
        self.entries
            .iter()
            .find(|(t, _)| t.name == name)
            .map(|(t, _)| t.clone())
    }

    /// Runs tool `name` (blocking); `None` when there is no such tool.
    pub fn call(
        &self,
        ctx: &C,
        name: &str,
        args: JsonObject,
        cancel: &Cancel,
    ) -> Option<CallToolResult> {
        let (_, handler) = self.entries.iter().find(|(t, _)| t.name == name)?;
        Some(handler(ctx, args, cancel))
    }
}

/// `args` as the tool's argument type.
pub fn parse_args<A: DeserializeOwned>(tool: &str, args: JsonObject) -> Result<A, ToolError> {
    serde_json::from_value(serde_json::Value::Object(args)).map_err(|e| ToolError::Arguments {
        tool: tool.to_string(),
        reason: e.to_string(),
    })
}

/// The MCP result of a tool call: structured content and its rendering,
/// or an error result (`isError`) whose text says what went wrong.
pub fn tool_result<O: Serialize + Render>(result: Result<O, ToolError>) -> CallToolResult {
    match result.and_then(|o| {
        serde_json::to_value(&o)
            .map(|v| (v, o.content()))
            .map_err(|e| ToolError::Ended(format!("cannot encode the result: {e}")))
    }) {
        Ok((value, content)) => {
            let mut r = CallToolResult::structured(value);
            r.content = content;
            r
        }
        Err(e) => {
            tracing::debug!("nook mcp: tool error: {}", e.message());
            CallToolResult::error(vec![ContentBlock::text(e.message())])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Echo {
        /// What to say.
        word: String,
        #[serde(default)]
        times: Option<u8>,
    }

    #[derive(Debug, Serialize, JsonSchema)]
    struct Said {
        said: String,
    }

    impl Render for Said {
        fn render(&self) -> String {
            format!("said {}", self.said)
        }
    }

    fn echo(_: &(), a: Echo, _: &Cancel) -> Result<Said, ToolError> {
        if a.word.is_empty() {
            return Err(ToolError::Argument {
                field: "word",
                reason: "empty".into(),
            });
        }
        Ok(Said {
            said: a.word.repeat(a.times.unwrap_or(1).into()),
        })
    }

    fn registry() -> ToolRegistry<()> {
        let mut r = ToolRegistry::default();
        r.add("echo", "Says a word.", echo);
        r
    }

    fn obj(v: serde_json::Value) -> JsonObject {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn schemas_come_from_the_types() {
        let r = registry();
        let t = r.tool("echo").unwrap();
        assert_eq!(t.description.as_deref(), Some("Says a word."));
        let input = serde_json::Value::Object((*t.input_schema).clone());
        assert_eq!(input["type"], "object");
        assert_eq!(input["required"], serde_json::json!(["word"]));
        assert_eq!(input["properties"]["word"]["description"], "What to say.");
        assert_eq!(input["additionalProperties"], false);
        let output = serde_json::Value::Object((*t.output_schema.unwrap()).clone());
        assert_eq!(output["properties"]["said"]["type"], "string");
    }

    #[test]
    fn results_carry_structured_content_and_text() {
        let r = registry();
        let res = r
            .call(
                &(),
                "echo",
                obj(serde_json::json!({"word": "hi", "times": 2})),
                &Cancel::default(),
            )
            .unwrap();
        assert_eq!(res.is_error, Some(false));
        assert_eq!(
            res.structured_content,
            Some(serde_json::json!({"said": "hihi"}))
        );
        assert_eq!(res.content[0].as_text().unwrap().text, "said hihi");
    }

    #[test]
    fn bad_arguments_are_tool_errors_naming_the_problem() {
        let r = registry();
        let cases = [
            (serde_json::json!({}), "missing field `word`"),
            (serde_json::json!({"word": 5}), "invalid type"),
            (
                serde_json::json!({"word": "a", "loud": true}),
                "unknown field `loud`",
            ),
            (
                serde_json::json!({"word": "a", "times": 300}),
                "invalid value",
            ),
            (serde_json::json!({"word": ""}), "invalid `word`: empty"),
        ];
        for (args, want) in cases {
            let res = r
                .call(&(), "echo", obj(args.clone()), &Cancel::default())
                .unwrap();
            assert_eq!(res.is_error, Some(true), "{args}");
            let text = &res.content[0].as_text().unwrap().text;
            assert!(text.contains(want), "{args}: {text}");
        }
        assert!(r
            .call(&(), "nope", JsonObject::new(), &Cancel::default())
            .is_none());
    }
}
