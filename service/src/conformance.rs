pub fn protocols() -> Vec<crate::rpc::Protocol> { vec![] }
