//! A faithful fake of the Bitbucket Cloud API subset bbcrawl uses, for the
//! demo, `simulate`, tests and benchmarks.
