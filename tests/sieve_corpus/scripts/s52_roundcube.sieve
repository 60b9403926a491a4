require ["fileinto","imap4flags","vacation","envelope"];
# rule:[lists]
if anyof (header :contains "list-id" "dev.lists.example.net")
{
	fileinto "Lists";
	stop;
}
# rule:[boss]
if anyof (address :is "from" "boss@example.com")
{
	addflag "\\Flagged";
}
# rule:[away]
if true
{
	vacation :days 7 :subject "Away" "Back on Monday";
}
