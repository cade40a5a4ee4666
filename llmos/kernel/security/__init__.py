"""The security layer, between the syscall table and the devices: who a caller is
(`principals`), what a user's programs may do (`policy`: the per-user policy file), what one
process may still spend (`quota`), and the guard every syscall passes (`guard`: capabilities,
taint, secrets, approvals, each decision audited in `llmos.store.audit`). See docs/SECURITY.md.
"""
