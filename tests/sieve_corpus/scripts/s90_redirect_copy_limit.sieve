require "copy";
redirect :copy "a1@example.org";
redirect :copy "a2@example.org";
redirect :copy "a3@example.org";
redirect :copy "a4@example.org";
redirect "a1@example.org";
