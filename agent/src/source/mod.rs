//! Pod sources: where desired pods come from.
