//! Not built yet: filled by issue 3.
