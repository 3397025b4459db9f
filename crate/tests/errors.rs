//! The messages users see for the crate's errors (they are shown in the page as they are).

use quant_playground::Error;

#[test]
fn unsupported_operators_are_named_and_pluralised() {
    assert_eq!(Error::Unsupported(vec!["Loop".into()]).to_string(), "unsupported operator: Loop");
    assert_eq!(
        Error::Unsupported(vec!["Loop".into(), "If".into()]).to_string(),
        "unsupported operators: Loop; If"
    );
}

#[test]
fn node_errors_name_the_node_and_its_operator() {
    let err = Error::node("conv_1", "Conv", "kernel shape does not match the weights");
    assert_eq!(err.to_string(), "node 'conv_1' (Conv): kernel shape does not match the weights");
}
