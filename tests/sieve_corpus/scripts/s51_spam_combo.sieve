require ["fileinto", "imap4flags", "relational", "comparator-i;ascii-numeric", "regex"];
if anyof (header :contains "x-spam-flag" "yes", header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5",
          header :regex "x-spam-level" "^\\*{5,}") {
  setflag "$Junk";
  fileinto "Junk";
  stop;
}
