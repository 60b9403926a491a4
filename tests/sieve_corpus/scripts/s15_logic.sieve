require "fileinto";
if allof (address :is "from" "boss@example.com", header :contains "subject" "report") { fileinto "A"; }
if anyof (false, header :contains "subject" "patch", not true) { fileinto "B"; }
if not anyof (exists "x-spam-flag", size :over 2K) { fileinto "C"; } else { discard; }
