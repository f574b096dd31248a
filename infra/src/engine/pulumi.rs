//! The `pulumi` engine: runs the user's installed `pulumi` CLI on the
//! rendered program in the target's output directory.
